"""The FineTuneJob API: typed spec and status, rules, validation and the generated CRD.

Light on dependencies (pydantic, PyYAML) so the operator image imports it without torch.
"""

from finetune_api.contract import API_GROUP, API_VERSION, KIND
from finetune_api.spec import FineTuneJobSpec, wire
from finetune_api.status import FineTuneJobStatus
from finetune_api.validation import InvalidSpec, load_spec_file, parse_spec

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "KIND",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "InvalidSpec",
    "load_spec_file",
    "parse_spec",
    "wire",
]
