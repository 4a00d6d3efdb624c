"""Test helper: train several specs in one trainer process group and print what each logged first.

    python -m tests.trainer.topology_probe OUT_DIR CONFIG...            # one process
    torchrun --nproc-per-node 2 -m tests.trainer.topology_probe OUT_DIR CONFIG...

Every rank trains every spec through ``engine.train`` (one launch pays for importing torch and
forming the process group once); rank 0 prints one JSON line mapping each config's file stem to the
first logged ``loss`` and ``grad_norm`` and the final ``eval_loss``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from finetune_api.validation import load_spec_file
from finetune_trainer import engine
from finetune_trainer.world import WorldInfo


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    results = {}
    for config in argv[1:]:
        name = Path(config).stem
        run = engine.train(load_spec_file(config), out / name)
        first = next(entry for entry in run.trainer.state.log_history if "loss" in entry)
        results[name] = {"loss": first["loss"], "grad_norm": first["grad_norm"], "eval_loss": run.metrics["eval_loss"]}
    if WorldInfo.from_env().is_main:
        print("PROBE " + json.dumps(results, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
