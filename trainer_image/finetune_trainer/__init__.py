"""The trainer: turns one FineTuneJob spec into a fine-tuned model in an output directory."""
