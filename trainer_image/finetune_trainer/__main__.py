"""``python -m finetune_trainer``: the trainer's command line."""

import sys

from finetune_trainer.cli import main

sys.exit(main())
