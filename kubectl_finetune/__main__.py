"""python -m kubectl_finetune: the plugin without kubectl in front."""

import sys

from kubectl_finetune.main import main

sys.exit(main())
