"""Finetuning: trait-inducing datasets, LoRA finetunes and the finetuning shift along vectors."""
