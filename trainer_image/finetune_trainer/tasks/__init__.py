"""Task registry: one line per task, name -> unit.

Adding a task is one module implementing :class:`~finetune_trainer.tasks.base.TaskUnit` and one
entry in ``TASKS``. Units import transformers/TRL inside their functions, so importing this
registry (e.g. for ``validate``) stays cheap.
"""

from __future__ import annotations

from finetune_api.matrix import TASKS as API_TASKS
from finetune_trainer.errors import ConfigError
from finetune_trainer.tasks.base import TaskUnit
from finetune_trainer.tasks.causal_lm import CausalLmTask
from finetune_trainer.tasks.kto import KtoTask
from finetune_trainer.tasks.orpo import OrpoTask
from finetune_trainer.tasks.preference import PreferenceTask
from finetune_trainer.tasks.question_answering import QuestionAnsweringTask
from finetune_trainer.tasks.regression import RegressionTask
from finetune_trainer.tasks.reward_modeling import RewardModelingTask
from finetune_trainer.tasks.seq2seq import Seq2SeqTask
from finetune_trainer.tasks.sequence_classification import SequenceClassificationTask
from finetune_trainer.tasks.token_classification import TokenClassificationTask

TASKS: dict[str, TaskUnit] = {
    "sequence-classification": SequenceClassificationTask(),
    "regression": RegressionTask(),
    "token-classification": TokenClassificationTask(),
    "question-answering": QuestionAnsweringTask(),
    "seq2seq": Seq2SeqTask(),
    "causal-lm": CausalLmTask(),
    "preference": PreferenceTask(),
    "orpo": OrpoTask(),
    "kto": KtoTask(),
    "reward-modeling": RewardModelingTask(),
}


def get_task(name: str) -> TaskUnit:
    """The unit for task.type, or a ConfigError when this trainer build lacks it."""
    try:
        return TASKS[name]
    except KeyError:
        known = "a task of the API" if name in API_TASKS else "not a task of the API"
        raise ConfigError(
            f"task.type: {name!r} ({known}) is not available in this trainer build; "
            f"available: {', '.join(sorted(TASKS))}"
        ) from None
