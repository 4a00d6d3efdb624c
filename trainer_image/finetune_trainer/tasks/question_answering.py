"""Extractive question answering (SQuAD format): predict the start and end token of the answer span.

Columns (roles): ``question``, ``context``, ``answers`` (``{"text": [...], "answer_start": [...]}``,
character offsets into the context; empty lists mark an unanswerable question) and an optional
``id``. A long context is cut into windows of training.maxSeqLength tokens that overlap by
task.docStride; a window that does not contain the answer is labelled with the CLS position.
Evaluation maps the start/end logits of every window back to character spans of the context,
keeps the best-scoring valid span per example and reports SQuAD exact match and token F1
(as fractions, 0..1).
"""

from __future__ import annotations

import collections
import re
import string
from typing import TYPE_CHECKING, Any

from finetune_trainer.data import describe_split, require_columns
from finetune_trainer.data_checks import RowProblems
from finetune_trainer.errors import DataError
from finetune_trainer.tasks.base import (
    PredictionRecorder,
    RunContext,
    column_roles_for,
    pad_multiple,
    pretrained_kwargs,
    task_trainer,
    training_arguments,
)

if TYPE_CHECKING:
    import numpy as np
    from datasets import Dataset, DatasetDict
    from transformers import EvalPrediction, PreTrainedModel, PreTrainedTokenizerBase, Trainer

    from finetune_api.spec import FineTuneJobSpec

N_BEST = 20  # candidate start and end positions per window
MAX_ANSWER_TOKENS = 30  # longest span considered at evaluation
MIN_CONTEXT_TOKENS = 8  # a window must hold at least this much context beyond the overlap


# ---- SQuAD scoring ----


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, truth: str) -> float:
    """1.0 when the normalised strings are equal."""
    return float(normalize_answer(prediction) == normalize_answer(truth))


def token_f1(prediction: str, truth: str) -> float:
    """Harmonic mean of token precision and recall between normalised answers (1.0 when both are empty)."""
    pred_tokens = normalize_answer(prediction).split()
    true_tokens = normalize_answer(truth).split()
    if not pred_tokens or not true_tokens:
        return float(pred_tokens == true_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(true_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(true_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Mean exact match and F1, each the best over an example's reference answers (none means '')."""
    if not predictions:
        return {"exact_match": 0.0, "f1": 0.0}
    em = f1 = 0.0
    for prediction, answers in zip(predictions, references, strict=True):
        golds = answers or [""]
        em += max(exact_match(prediction, g) for g in golds)
        f1 += max(token_f1(prediction, g) for g in golds)
    return {"exact_match": em / len(predictions), "f1": f1 / len(predictions)}


# ---- windows and labels ----


def _cls_index(input_ids: list[int], cls_token_id: int | None) -> int:
    return input_ids.index(cls_token_id) if cls_token_id is not None and cls_token_id in input_ids else 0


def answer_token_span(
    offsets: list[tuple[int, int]], sequence_ids: list[int | None], start_char: int, end_char: int
) -> tuple[int, int] | None:
    """Token positions of the first and last context token covering [start_char, end_char), or None
    when the window does not hold the whole answer."""
    context = [i for i, s in enumerate(sequence_ids) if s == 1]
    if not context:
        return None
    first, last = context[0], context[-1]
    if offsets[first][0] > start_char or offsets[last][1] < end_char:
        return None
    start = first
    while start <= last and offsets[start][1] <= start_char:
        start += 1
    end = last
    while end >= first and offsets[end][0] >= end_char:
        end -= 1
    if start > end:
        return None
    return start, end


class QuestionAnsweringTask:
    """AutoModelForQuestionAnswering over overlapping windows; SQuAD exact match and F1."""

    name = "question-answering"
    peft_task_type = "QUESTION_ANS"  # which PeftModel wrapper (and so which head) an adapter gets
    default_metric = "exact_match"
    greater_is_better = True

    def column_roles(self, spec: FineTuneJobSpec) -> dict[str, str]:
        """id, question, context and answers columns (task.columns over the defaults)."""
        return column_roles_for(spec)

    def _read_roles(self, spec: FineTuneJobSpec, dataset: Dataset) -> dict[str, str]:
        roles = self.column_roles(spec)
        read = {r: roles[r] for r in ("question", "context", "answers")}
        if "id" in spec.task.columns or roles["id"] in dataset.column_names:
            read["id"] = roles["id"]
        return read

    def check_dataset(self, spec: FineTuneJobSpec, datasets: DatasetDict) -> None:
        """Columns present; every answer is SQuAD-shaped and found at its answer_start in the context."""
        problems = RowProblems()
        for split, dataset in datasets.items():
            roles = self._read_roles(spec, dataset)
            require_columns(dataset, spec, split, roles)
            where = describe_split(spec, split)
            columns = dataset.select_columns([roles["question"], roles["context"], roles["answers"]])
            for row, example in enumerate(columns):
                question, context, answers = (example[roles[r]] for r in ("question", "context", "answers"))
                for role, value in (("question", question), ("context", context)):
                    if not isinstance(value, str):
                        problems.add(where, roles[role], row, f"expected text, got {value!r}; fill or drop the row")
                problem = _answers_problem(answers, context) if isinstance(context, str) else None
                if problem:
                    problems.add(where, roles["answers"], row, problem)
        problems.raise_if_any()

    def check_with_tokenizer(
        self, spec: FineTuneJobSpec, datasets: DatasetDict, tokenizer: PreTrainedTokenizerBase
    ) -> None:
        """Every question leaves room in a window for more context than the overlap (docStride)."""
        max_length = spec.training.max_seq_length
        stride = spec.task.doc_stride
        specials = tokenizer.num_special_tokens_to_add(pair=True)
        for split, dataset in datasets.items():
            roles = self._read_roles(spec, dataset)
            questions = [q.lstrip() for q in dataset[roles["question"]]]
            lengths = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]]
            if not lengths:
                continue
            row = max(range(len(lengths)), key=lengths.__getitem__)
            room = max_length - lengths[row] - specials
            if room <= stride or room < MIN_CONTEXT_TOKENS:
                ident = f" (id {dataset[row][roles['id']]!r})" if "id" in roles else ""
                needed = lengths[row] + specials + max(stride + 1, MIN_CONTEXT_TOKENS) + 64
                raise DataError(
                    f"{describe_split(spec, split)} row {row}{ident}: the question is {lengths[row]} tokens, leaving "
                    f"{room} of training.maxSeqLength {max_length} for the context, not more than the "
                    f"task.docStride overlap of {stride}; set training.maxSeqLength to at least {needed} "
                    f"(or lower task.docStride)"
                )

    def load_model(self, spec: FineTuneJobSpec, model_path: str, load_kwargs: dict[str, Any]) -> PreTrainedModel:
        """The model with a span head (start and end logits per token)."""
        from transformers import AutoModelForQuestionAnswering

        model: PreTrainedModel = AutoModelForQuestionAnswering.from_pretrained(
            model_path, **pretrained_kwargs(spec, model_path), **load_kwargs
        )
        return model

    def preprocess(
        self, spec: FineTuneJobSpec, dataset: Dataset, tokenizer: PreTrainedTokenizerBase, *, keep_offsets: bool
    ) -> Dataset:
        """Windows of question + context with start/end positions; with ``keep_offsets`` also each window's
        ``example_index`` and context-only ``offset_mapping`` (None outside the context) for post-processing."""
        roles = self._read_roles(spec, dataset)
        cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id

        def windows(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, Any]:
            encoded = tokenizer(
                [q.lstrip() for q in batch[roles["question"]]],
                batch[roles["context"]],
                truncation="only_second",
                max_length=spec.training.max_seq_length,
                stride=spec.task.doc_stride,
                return_overflowing_tokens=True,
                return_offsets_mapping=True,
            )
            sample_of = encoded.pop("overflow_to_sample_mapping")
            all_offsets = encoded.pop("offset_mapping")
            starts, ends, example_index, context_offsets = [], [], [], []
            for i, offsets in enumerate(all_offsets):
                sample = sample_of[i]
                sequence_ids = encoded.sequence_ids(i)
                cls = _cls_index(encoded["input_ids"][i], cls_id)
                answers = batch[roles["answers"]][sample]
                span = None
                if answers["text"]:
                    start_char = answers["answer_start"][0]
                    span = answer_token_span(offsets, sequence_ids, start_char, start_char + len(answers["text"][0]))
                starts.append(span[0] if span else cls)
                ends.append(span[1] if span else cls)
                if keep_offsets:
                    example_index.append(indices[sample])
                    context_offsets.append([o if s == 1 else None for o, s in zip(offsets, sequence_ids, strict=True)])
            out = dict(encoded)
            out["start_positions"] = starts
            out["end_positions"] = ends
            if keep_offsets:
                out["example_index"] = example_index
                out["offset_mapping"] = context_offsets
            return out

        return dataset.map(
            windows, batched=True, with_indices=True, remove_columns=dataset.column_names, desc="Windowing"
        )

    def build_trainer(self, ctx: RunContext, model: Any) -> Trainer:
        """A Trainer on windows; evaluation keeps window order and scores spans mapped back to the text."""
        from transformers import DataCollatorWithPadding

        args = training_arguments(ctx, label_names=["start_positions", "end_positions"])
        spec = ctx.spec
        with args.main_process_first(desc="windowing"):
            train = self.preprocess(spec, ctx.datasets["train"], ctx.tokenizer, keep_offsets=False)
            evaluation = None
            compute_metrics = None
            if "eval" in ctx.datasets:
                examples = ctx.datasets["eval"]
                windows = self.preprocess(spec, examples, ctx.tokenizer, keep_offsets=True)
                evaluation = windows.remove_columns(["example_index", "offset_mapping"])
                compute_metrics = metrics_function(
                    examples[self._read_roles(spec, examples)["context"]],
                    [a["text"] for a in examples[self._read_roles(spec, examples)["answers"]]],
                    windows["example_index"],
                    windows["offset_mapping"],
                )
        return task_trainer(
            ctx,
            model,
            args,
            train=train,
            evaluation=evaluation,
            collator=DataCollatorWithPadding(ctx.tokenizer, pad_to_multiple_of=pad_multiple(ctx)),
            compute_metrics=compute_metrics,
            trainer_class=_trainer_class(),
        )


def _answers_problem(answers: Any, context: str) -> str | None:
    if not isinstance(answers, dict) or "text" not in answers or "answer_start" not in answers:
        return (
            f'expected {{"text": [...], "answer_start": [...]}} (SQuAD format), got {answers!r}; '
            "use empty lists for a question without an answer"
        )
    texts, starts = answers["text"], answers["answer_start"]
    if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
        return f"give answers.text and answers.answer_start as lists of the same length, got {answers!r}"
    for text, start in zip(texts, starts, strict=True):
        if not isinstance(start, int) or not isinstance(text, str):
            return f"answer {text!r} at {start!r}: give the text as a string and answer_start as a character offset"
        if context[start : start + len(text)] != text:
            found = context[start : start + len(text)]
            return (
                f"answer {text!r} is not at answer_start {start} of the context (found {found!r}); "
                "set answer_start to the character offset of the answer in the context, or fix the answer's text"
            )
    return None


def _trainer_class() -> type[Trainer]:
    """A Trainer that evaluates windows in dataset order, which span post-processing relies on."""
    from torch.utils.data import SequentialSampler
    from transformers import Trainer

    class QuestionAnsweringTrainer(Trainer):
        def _get_eval_sampler(self, eval_dataset: Any) -> Any:
            # group_by_length would also shuffle evaluation batches; windows must stay aligned with
            # their offsets. Several processes: no sampler, accelerate shards in order and gathers back.
            return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None

    return QuestionAnsweringTrainer


def best_spans(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    contexts: list[str],
    example_index: list[int],
    offsets: list[list[Any]],
    *,
    allow_empty: bool,
) -> list[str]:
    """The best answer text per example from the logits of all its windows (n-best start x end search)."""
    import numpy as np

    windows_of: dict[int, list[int]] = collections.defaultdict(list)
    for window, example in enumerate(example_index):
        windows_of[example].append(window)
    answers = []
    for example, context in enumerate(contexts):
        best_score, best_text = -np.inf, ""
        null_score = np.inf
        for window in windows_of.get(example, []):
            window_offsets = offsets[window]
            n = len(window_offsets)
            starts, ends = start_logits[window][:n], end_logits[window][:n]
            null_score = min(null_score, float(starts[0] + ends[0]))
            for s in np.argsort(starts)[::-1][:N_BEST]:
                for e in np.argsort(ends)[::-1][:N_BEST]:
                    if window_offsets[s] is None or window_offsets[e] is None:
                        continue
                    if e < s or e - s + 1 > MAX_ANSWER_TOKENS:
                        continue
                    score = float(starts[s] + ends[e])
                    if score > best_score:
                        best_score = score
                        best_text = context[window_offsets[s][0] : window_offsets[e][1]]
        if allow_empty and null_score > best_score:
            best_text = ""
        answers.append(best_text)
    return answers


def metrics_function(
    contexts: list[str], references: list[list[str]], example_index: list[int], offsets: list[list[Any]]
) -> Any:
    """compute_metrics over the evaluation windows (in dataset order): SQuAD exact_match and f1.

    Records each example's answer text (empty: no answer).
    """
    allow_empty = any(not refs for refs in references)

    def score(prediction: EvalPrediction) -> tuple[dict[str, float], list[Any]]:
        import numpy as np

        start_logits, end_logits = (np.asarray(x) for x in prediction.predictions[:2])
        texts = best_spans(start_logits, end_logits, contexts, example_index, offsets, allow_empty=allow_empty)
        return squad_scores(texts, references), list(texts)

    return PredictionRecorder(score)
