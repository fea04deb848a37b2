"""``python -m personavec``: the command line."""

from personavec.cli import main

main()
