from personavec.cli.app import main

main()
