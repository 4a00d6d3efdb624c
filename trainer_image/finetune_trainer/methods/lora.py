"""LoRA: low-rank adapters on the attention projections (peft), plus a trainable task head."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_trainer.errors import ConfigError
from finetune_trainer.methods.base import HEAD_TASK_TYPES, MethodDefaults, head_module_names

if TYPE_CHECKING:
    from peft import LoraConfig
    from torch import nn
    from transformers import PreTrainedModel

    from finetune_api.spec import FineTuneJobSpec, MethodSpec


def default_target_modules(model: nn.Module) -> list[str]:
    """The modules LoRA adapts when method.lora.targetModules is empty: the query and value projections.

    The table of names per architecture is peft's (``query``/``value`` for BERT, ``q_proj``/``v_proj``
    for Llama, ...), so a new architecture that peft knows works without a change here.
    """
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type or "")
    if not targets:
        raise ConfigError(
            f"method.lora.targetModules: there is no default for model type {model_type!r}; name the modules "
            f"to adapt, e.g. some of: {', '.join(linear_module_names(model)[:20])}"
        )
    return list(targets)


def linear_module_names(model: nn.Module) -> list[str]:
    """Distinct leaf names of the linear layers in the model (what targetModules can name)."""
    from torch import nn

    names: list[str] = []
    for full_name, module in model.named_modules():
        leaf = full_name.rsplit(".", 1)[-1]
        is_linear = isinstance(module, nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt", "Conv1D")
        if is_linear and leaf not in names:
            names.append(leaf)
    return names


# initLoraWeights -> peft's init_lora_weights; loftq starts from peft's default and is replaced after attaching.
PEFT_LORA_INIT: dict[str, Any] = {
    "default": True,
    "gaussian": "gaussian",
    "pissa": "pissa",
    "olora": "olora",
    "loftq": True,
}
# Initialisations that move part of each base weight into the adapter (the base in memory is changed).
MUTATING_INITS = ("pissa", "olora")
INITIAL_ADAPTER_DIR = "initial_adapter"  # also the adapter name peft loads it under: no dots


def head_linear_names(model: nn.Module, heads: list[str]) -> list[str]:
    """Full names of the linear layers inside the task head (never LoRA targets: the head trains in full)."""
    from torch import nn

    return [
        name
        for name, module in model.named_modules()
        if name.split(".", 1)[0] in heads and isinstance(module, nn.Linear)
    ]


def lora_config(spec: FineTuneJobSpec, model: PreTrainedModel, task_type: str) -> LoraConfig:
    """The peft LoraConfig for the spec; shared with qlora, which only changes how the base loads."""
    from peft import LoraConfig

    from finetune_api.spec import LoraOptions

    opts = spec.method.lora or LoraOptions()
    # The head of a classification/QA model is new and random: it must train and be saved with the adapter
    # (modules_to_save), or the adapter would be useless without the exact same random head.
    heads = head_module_names(model) if task_type in HEAD_TASK_TYPES else []
    to_save = list(dict.fromkeys([*heads, *opts.modules_to_save]))
    targets: list[str] | str
    exclude: list[str] | None = None
    if opts.target_modules == ["all-linear"]:
        # peft leaves out the output embeddings and a sequence-classification head; the heads of other tasks
        # (token classification, QA) train in full, so their linear layers are left out here.
        targets = "all-linear"
        exclude = head_linear_names(model, to_save) or None
    else:
        targets = list(opts.target_modules) if opts.target_modules else default_target_modules(model)
    return LoraConfig(
        r=opts.r,
        lora_alpha=opts.alpha,
        lora_dropout=opts.dropout,
        bias=opts.bias,
        target_modules=targets,
        exclude_modules=exclude,
        modules_to_save=to_save or None,
        use_dora=opts.use_dora,
        use_rslora=opts.use_rslora,
        init_lora_weights=PEFT_LORA_INIT[opts.init_lora_weights],
        task_type=task_type,
    )


def keep_initial_adapter(spec: FineTuneJobSpec, peft_model: Any, output_dir: Path) -> None:
    """Save a PiSSA/OLoRA adapter as initialised, so the final one can be converted for the original base.

    Both move the adapter's starting value out of the base weights. peft's conversion
    (``save_pretrained(path_initial_model_for_weight_conversion=...)``) turns the trained adapter into a
    plain LoRA adapter of rank 2r that applies to the unchanged base; it needs this initial state.
    """
    from finetune_api.spec import LoraOptions

    opts = spec.method.lora or LoraOptions()
    if opts.init_lora_weights not in MUTATING_INITS:
        return
    config = peft_model.peft_config["default"]
    # Saved as a standard adapter, so loading it for the conversion does not decompose the base again.
    config.init_lora_weights = True
    try:
        peft_model.save_pretrained(str(output_dir / INITIAL_ADAPTER_DIR))
    finally:
        config.init_lora_weights = PEFT_LORA_INIT[opts.init_lora_weights]


def convert_saved_adapter(spec: FineTuneJobSpec, peft_model: Any, output_dir: Path) -> None:
    """Rewrite the saved PiSSA/OLoRA adapter in output_dir as a LoRA adapter for the original base."""
    import shutil

    from finetune_api.spec import LoraOptions

    opts = spec.method.lora or LoraOptions()
    initial = output_dir / INITIAL_ADAPTER_DIR
    if opts.init_lora_weights not in MUTATING_INITS or not initial.is_dir():
        return
    from safetensors.torch import load_file, save_file

    weights = output_dir / "adapter_model.safetensors"
    before = load_file(str(weights))
    peft_model.save_pretrained(str(output_dir), path_initial_model_for_weight_conversion=str(initial))
    shutil.rmtree(initial)
    # peft 0.21's conversion writes the LoRA pairs only and drops the modules_to_save weights (the task head):
    # put them back, or the adapter would reload with a random head. The reload tests pin this.
    after = load_file(str(weights))
    dropped = {k: v for k, v in before.items() if k not in after and "lora_" not in k}
    if dropped:
        save_file({**after, **dropped}, str(weights), metadata={"format": "pt"})


def unmatched_targets(model: nn.Module, targets: list[str]) -> list[str]:
    """The target module names that match no module of the model (peft's rule: the name or its last parts)."""
    names = [name for name, _ in model.named_modules()]
    return [t for t in targets if not any(name == t or name.endswith(f".{t}") for name in names)]


def attach_adapter(model: PreTrainedModel, config: Any, field: str) -> Any:
    """get_peft_model, refusing target modules that match nothing in the model with a ConfigError naming them.

    peft adapts the names that match and silently ignores the others; a misspelt name among good ones
    would train a different adapter than the spec says, so every name must match.
    """
    from peft import get_peft_model
    from peft.utils import NoMatchingPeftModuleError

    targets = getattr(config, "target_modules", None)  # prompt methods (prefix, p-tuning) have none
    missing = unmatched_targets(model, sorted(targets)) if isinstance(targets, list | set | tuple) else []
    existing = ", ".join(linear_module_names(model)[:30])
    if missing:
        raise ConfigError(
            f"{field}: {', '.join(repr(m) for m in missing)} matches no module of this model; "
            f"name some of its linear layers instead: {existing}"
        )
    try:
        peft_model = get_peft_model(model, config)
    except NoMatchingPeftModuleError as err:
        raise ConfigError(f"{field}: {err} Name some of the model's linear layers: {existing}") from None
    dedupe_modules_to_save(peft_model)
    return peft_model


def dedupe_modules_to_save(peft_model: Any) -> None:
    """peft appends its default head names (classifier, score, qa_outputs) to ours; list each once."""
    for config in peft_model.peft_config.values():
        if getattr(config, "modules_to_save", None):
            config.modules_to_save = list(dict.fromkeys(config.modules_to_save))


class LoraMethod(MethodDefaults):
    """Low-rank adapters; the saved artifact is the adapter plus the task head (modules_to_save)."""

    name = "lora"

    def load_kwargs(self, spec: FineTuneJobSpec) -> dict[str, Any]:
        """The base loads as for full fine-tuning (qlora adds a quantization config)."""
        return {}

    def peft_config(self, spec: FineTuneJobSpec, model: PreTrainedModel, task_type: str) -> LoraConfig:
        """LoraConfig from method.lora, with per-architecture target modules when none are named."""
        return lora_config(spec, model, task_type)

    def prepare(self, spec: FineTuneJobSpec, model: PreTrainedModel, task_type: str) -> Any:
        """The PeftModel: base frozen, adapters and head trainable."""
        return attach_adapter(model, self.peft_config(spec, model, task_type), "method.lora.targetModules")

    def start(self, spec: FineTuneJobSpec, model: Any, output_dir: Path, is_main: bool) -> None:
        """Before training: keep a PiSSA/OLoRA adapter's initial state (main process) for the final conversion."""
        if is_main:
            keep_initial_adapter(spec, model, output_dir)

    def finish(self, spec: FineTuneJobSpec, model: Any, output_dir: Path, is_main: bool) -> None:
        """After the final save: convert a PiSSA/OLoRA adapter to apply to the original base."""
        if is_main:
            convert_saved_adapter(spec, model, output_dir)

    def fingerprint_fields(self, spec: FineTuneJobSpec) -> dict[str, Any]:
        """The rank and the adapted modules decide the adapter's shape."""
        from pydantic.alias_generators import to_camel

        from finetune_api.spec import LoraOptions

        lora = spec.method.lora or LoraOptions()
        fields: dict[str, Any] = {
            "method.lora.r": lora.r,
            "method.lora.targetModules": sorted(lora.target_modules) if lora.target_modules else None,
        }
        # Options that change what the adapter holds; listed only when set, so older fingerprints stay valid.
        defaults = LoraOptions()
        for key in ("use_dora", "use_rslora", "init_lora_weights", "modules_to_save"):
            if getattr(lora, key) != getattr(defaults, key):
                fields[f"method.lora.{to_camel(key)}"] = getattr(lora, key)
        return fields

    def resolved(self, spec: FineTuneJobSpec, model: Any) -> MethodSpec:
        """method.lora with its defaults filled, and the target modules peft chose when none were named."""
        from finetune_api.spec import LoraOptions

        lora = spec.method.lora or LoraOptions()
        peft_config = getattr(model, "peft_config", {}).get("default")
        targets = getattr(peft_config, "target_modules", None)
        if not lora.target_modules and targets:
            lora = lora.model_copy(update={"target_modules": sorted(targets)})
        return spec.method.model_copy(update={"lora": lora})
