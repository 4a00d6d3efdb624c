"""kubectl finetune: the FineTuneJob plugin for kubectl (one module per command group)."""
