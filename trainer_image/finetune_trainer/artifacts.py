"""Final artifacts beside the model: the model card and the merged model (they need the task and method units)."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from finetune_api.contract import (
    API_GROUP,
    API_GROUP_VERSION,
    KIND,
    METRICS_FILE,
    RESOLVED_SPEC_FILE,
)
from finetune_api.spec import wire
from finetune_trainer.job_location import JobLocation
from finetune_trainer.methods import get_method
from finetune_trainer.s3_output import MERGED_LOCAL

if TYPE_CHECKING:
    from finetune_api.spec import FineTuneJobSpec

log = logging.getLogger(__name__)

MODEL_CARD = "README.md"


def write_model_card(
    spec: FineTuneJobSpec,
    out: Path,
    metrics: Mapping[str, Any],
    location: JobLocation,
    samples: Sequence[Mapping[str, Any]] = (),
) -> Path:
    """README.md for the final artifacts: what was trained, how well, sample generations, how to load it, the spec."""
    m = spec.model
    base = m.name or m.uri or m.path
    resolved = out / RESOLVED_SPEC_FILE
    spec_yaml = resolved.read_text() if resolved.is_file() else yaml.safe_dump(wire(spec), sort_keys=False)
    from peft.utils.constants import CONFIG_NAME as ADAPTER_CONFIG

    adapter = (out / ADAPTER_CONFIG).is_file()  # every peft method saves one; full models do not
    rows = "\n".join(
        f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in sorted(metrics.items())
    )
    header = yaml.safe_dump(
        {
            "library_name": "peft" if adapter else "transformers",
            "base_model": base,
            "tags": [API_GROUP, spec.task.type, spec.method.type],
        },
        sort_keys=False,
    )
    what = "a peft adapter (and the task head)" if adapter else "the full model"
    text = f"""---
{header}---
# {location.root.key.rstrip("/").rsplit("/", 1)[-1]}

Fine-tuned from `{base}` for **{spec.task.type}** with **{spec.method.type}** by a {KIND}
({API_GROUP_VERSION}). This folder holds {what}, the tokenizer, `{METRICS_FILE}`,
`trainer_state.json` and the resolved spec; `manifest.json` lists every file with its sha256.

- artifacts: `{location.final}`
- checkpoints: `{location.checkpoints}`

## Results

| metric | value |
|---|---|
{rows}

{_samples_section(samples)}## Load it

```python
from finetune_trainer.engine import load_for_inference

run = load_for_inference("<this folder, downloaded>")
```

## Spec

```yaml
{spec_yaml.rstrip()}
```
"""
    path = out / MODEL_CARD
    path.write_text(text)
    return path


def _samples_section(samples: Sequence[Mapping[str, Any]]) -> str:
    """The model card's sample generations (greedy, on held-out prompts), or nothing."""
    if not samples:
        return ""
    parts = ["## Sample generations\n\nGreedy answers of the final model to held-out prompts.\n"]
    for i, sample in enumerate(samples, 1):
        parts.append(f"### Sample {i}\n\nPrompt:\n\n```text\n{sample['prompt']}\n```\n")
        parts.append(f"Generated:\n\n```text\n{sample['generated']}\n```\n")
        if sample.get("reference") is not None:
            parts.append(f"Reference:\n\n```text\n{sample['reference']}\n```\n")
    return "\n".join(parts) + "\n"


def save_merged_model(spec: FineTuneJobSpec, out: Path, model_path: str) -> Path:
    """The base with the trained LoRA adapter merged in (peft merge_and_unload), saved to out/merged.

    The base is loaded again unquantised (for qlora in the quantisation's compute dtype): 4-bit
    weights cannot take a merged update.
    """
    from peft import PeftModel
    from transformers import AutoTokenizer

    from finetune_trainer.tasks import get_task

    kwargs = get_method(spec.method.type).merge_load_kwargs(spec)
    base = get_task(spec.task.type).load_model(spec, model_path, kwargs)
    merged = PeftModel.from_pretrained(base, str(out)).merge_and_unload()
    dest = out / MERGED_LOCAL
    shutil.rmtree(dest, ignore_errors=True)
    merged.save_pretrained(str(dest))
    AutoTokenizer.from_pretrained(str(out)).save_pretrained(str(dest))
    if (out / RESOLVED_SPEC_FILE).is_file():
        shutil.copy2(out / RESOLVED_SPEC_FILE, dest / RESOLVED_SPEC_FILE)
    log.info("merged the adapter into the base: %s", dest)
    return dest
