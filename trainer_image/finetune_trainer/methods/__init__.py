"""Method registry: one line per method, name -> unit.

Adding a method is one module implementing :class:`~finetune_trainer.methods.base.MethodUnit`
and one entry in ``METHODS``. Units import their heavy libraries (peft, bitsandbytes) inside
their functions, so importing this registry stays cheap.
"""

from __future__ import annotations

from finetune_api.matrix import METHODS as API_METHODS
from finetune_trainer.errors import ConfigError
from finetune_trainer.methods.base import MethodUnit
from finetune_trainer.methods.feature_extraction import FeatureExtractionMethod
from finetune_trainer.methods.freeze import FreezeMethod
from finetune_trainer.methods.full import FullMethod
from finetune_trainer.methods.ia3 import Ia3Method
from finetune_trainer.methods.lora import LoraMethod
from finetune_trainer.methods.p_tuning import PTuningMethod
from finetune_trainer.methods.prefix_tuning import PrefixTuningMethod
from finetune_trainer.methods.prompt_tuning import PromptTuningMethod
from finetune_trainer.methods.qlora import QloraMethod

METHODS: dict[str, MethodUnit] = {
    "full": FullMethod(),
    "feature-extraction": FeatureExtractionMethod(),
    "freeze": FreezeMethod(),
    "lora": LoraMethod(),
    "qlora": QloraMethod(),
    "ia3": Ia3Method(),
    "prompt-tuning": PromptTuningMethod(),
    "p-tuning": PTuningMethod(),
    "prefix-tuning": PrefixTuningMethod(),
}


def get_method(name: str) -> MethodUnit:
    """The unit for method.type, or a ConfigError when this trainer build lacks it."""
    try:
        return METHODS[name]
    except KeyError:
        known = "a method of the API" if name in API_METHODS else "not a method of the API"
        raise ConfigError(
            f"method.type: {name!r} ({known}) is not available in this trainer build; "
            f"available: {', '.join(sorted(METHODS))}"
        ) from None
