"""predict: the job's final artifacts from S3, the task run on the user's inputs.

S3 is read with the job's credentials Secret only when the user's kubeconfig may read that
Secret (a SelfSubjectAccessReview says so); otherwise with the user's own environment (AWS_*),
and the command says which.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from finetune_api.contract import ENV_S3_ACCESS_KEY_ID, ENV_S3_SECRET_ACCESS_KEY
from kubectl_finetune.formatting import number
from kubectl_finetune.kube import Cluster, CommandError

GENERATION_TASKS = ("causal-lm", "preference", "orpo", "kto", "seq2seq")
MAX_NEW_TOKENS = 64
QA_WINDOW, QA_STRIDE = 384, 128  # question-answering: tokens per window of the passage, overlap between windows


def default_cache_dir() -> Path:
    """Where downloaded artifacts are kept between calls."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kubectl-finetune"


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """os.environ with ``values`` set for the block (boto3 reads its credentials there)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def job_credentials(cluster: Cluster, job: dict[str, Any], say: Callable[[str], None]) -> dict[str, str]:
    """The job's S3 credentials when the kubeconfig may read their Secret; else {} (the environment's), said so."""
    s3 = ((job.get("spec") or {}).get("output") or {}).get("s3") or {}
    ref = s3.get("credentialsSecretRef")
    namespace = job["metadata"]["namespace"]
    if not ref:
        say("the job names no S3 credentials Secret: reading S3 with your environment's credentials")
        return {}
    if not cluster.may_read_secret(namespace, ref["name"]):
        say(
            f'your kubeconfig may not read the job\'s S3 credentials (Secret "{ref["name"]}" in namespace '
            f'"{namespace}"): reading S3 with your environment\'s credentials (AWS_ACCESS_KEY_ID, ...) instead'
        )
        return {}
    data = cluster.secret_data(namespace, ref["name"])
    keys = (ref.get("accessKeyIdKey", ENV_S3_ACCESS_KEY_ID), ref.get("secretAccessKeyKey", ENV_S3_SECRET_ACCESS_KEY))
    missing = [k for k in keys if k not in data]
    if missing:
        raise CommandError(f'Secret "{ref["name"]}" has no key {", ".join(missing)}')
    return {ENV_S3_ACCESS_KEY_ID: data[keys[0]], ENV_S3_SECRET_ACCESS_KEY: data[keys[1]]}


def download(spec: Any, uri: str, dest: Path) -> Path:
    """The objects under an s3:// prefix, downloaded once into dest (checked against their sizes)."""
    from finetune_trainer.s3_types import S3Uri
    from finetune_trainer.storage import S3Storage

    prefix = S3Uri.parse(uri).as_prefix()
    storage = S3Storage.for_location(spec.output.s3)
    objects = storage.list_objects(prefix)
    if not objects:
        raise CommandError(f"no artifacts under {uri}")
    pairs = [(S3Uri(prefix.bucket, o.key), dest / o.key[len(prefix.key) :]) for o in objects]
    missing = [
        (u, p) for (u, p), o in zip(pairs, objects, strict=True) if not p.is_file() or p.stat().st_size != o.size
    ]
    if missing:
        storage.download_files(missing)
    return dest


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """transformers' errors only for the block: its load report (the base model's fresh head before the
    adapter brings the trained one, keys it ignores), its "Loading weights" progress bar and the libraries'
    deprecation notices (FutureWarning) say nothing to someone asking for predictions; nor does bitsandbytes'
    notice, when peft imports it on a CPU with AVX512-BF16, that an optional CPU kernel package is missing."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    bnb = logging.getLogger("bitsandbytes")
    bnb_level = bnb.level
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    bnb.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(level)
        bnb.setLevel(bnb_level)
        if bars:
            hf_logging.enable_progress_bar()


def load(spec: Any, directory: Path, merged: bool) -> tuple[Any, Any]:
    """Model and tokenizer of the artifacts: a merged or full model as is, an adapter on its base."""
    with quiet_loading():
        return _load(spec, directory, merged)


def _load(spec: Any, directory: Path, merged: bool) -> tuple[Any, Any]:
    from transformers import AutoTokenizer

    from finetune_trainer.engine import resolve_model_location
    from finetune_trainer.methods import get_method
    from finetune_trainer.tasks import get_task

    task = get_task(spec.task.type)
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    if merged or not (directory / "adapter_config.json").is_file():
        return task.load_model(spec, str(directory), {}).eval(), tokenizer
    from peft import PeftModel

    base = task.load_model(
        spec, resolve_model_location(spec.model, spec.output.s3), get_method(spec.method.type).merge_load_kwargs(spec)
    )
    model = PeftModel.from_pretrained(base, str(directory))
    if spec.method.type in ("lora", "qlora"):
        model = model.merge_and_unload()
    return model.eval(), tokenizer


def run_task(
    task: str, model: Any, tokenizer: Any, texts: Sequence[str], *, context: str | None, multi_label: bool
) -> list[dict[str, Any]]:
    """One prediction per input, shaped by the task."""
    from transformers import pipeline as make_pipeline

    pipeline: Any = make_pipeline

    if task in ("sequence-classification", "regression"):
        fn = "sigmoid" if multi_label else "none" if task == "regression" else "softmax"
        pipe = pipeline("text-classification", model=model, tokenizer=tokenizer, top_k=None, function_to_apply=fn)
        out = []
        for text, scores in zip(texts, pipe(list(texts)), strict=True):
            ranked = sorted(scores, key=lambda s: -s["score"])
            out.append({"input": text, "label": ranked[0]["label"], "scores": {s["label"]: s["score"] for s in ranked}})
        return out
    if task == "token-classification":
        pipe = pipeline("token-classification", model=model, tokenizer=tokenizer, aggregation_strategy="simple")
        return [
            {
                "input": t,
                "entities": [
                    {
                        "entity": e["entity_group"],
                        "word": e["word"],
                        "score": float(e["score"]),
                        "start": e["start"],
                        "end": e["end"],
                    }
                    for e in ents
                ],
            }
            for t, ents in zip(texts, pipe(list(texts)), strict=True)
        ]
    if task == "question-answering":
        if not context:
            raise CommandError("question-answering needs --passage TEXT (the passage the answer is taken from)")
        return [{"input": q, **answer_span(model, tokenizer, q, context)} for q in texts]
    if task in GENERATION_TASKS:
        pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
        return [
            {
                "input": t,
                "generated": r[0]["generated_text"][len(t) :]
                if r[0]["generated_text"].startswith(t)
                else r[0]["generated_text"],
            }
            for t, r in zip(
                texts, [pipe(t, max_new_tokens=MAX_NEW_TOKENS, do_sample=False) for t in texts], strict=True
            )
        ]
    raise CommandError(f"predict does not run task {task} yet")


def answer_span(model: Any, tokenizer: Any, question: str, passage: str) -> dict[str, Any]:
    """The answer to a question in the passage: the task's n-best span search over the passage's windows."""
    import torch

    from finetune_trainer.tasks.question_answering import best_spans

    windows = tokenizer(
        question,
        passage,
        truncation="only_second",
        max_length=min(QA_WINDOW, tokenizer.model_max_length),
        stride=QA_STRIDE,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=True,
        return_tensors="pt",
    )
    offsets = [
        [tuple(o) if windows.sequence_ids(w)[i] == 1 else None for i, o in enumerate(window.tolist())]
        for w, window in enumerate(windows.pop("offset_mapping"))
    ]
    example_index = windows.pop("overflow_to_sample_mapping").tolist()
    with torch.no_grad():
        out = model(**windows)
    [text] = best_spans(
        out.start_logits.numpy(), out.end_logits.numpy(), [passage], example_index, offsets, allow_empty=False
    )
    start = passage.find(text)
    return {"answer": text, "start": start, "end": start + len(text)}


def render_predictions(predictions: list[dict[str, Any]]) -> str:
    """The predictions as a person reads them."""
    lines = []
    for p in predictions:
        lines.append(f"> {p['input']}")
        if "label" in p:
            scores = ", ".join(f"{k} {number(v, 3)}" for k, v in p["scores"].items() if math.isfinite(v))
            lines.append(f"  {p['label']}  ({scores})")
        elif "entities" in p:
            lines += [f"  {e['entity']}: {e['word']} ({number(e['score'], 3)})" for e in p["entities"]] or [
                "  no entities"
            ]
        elif "answer" in p:
            lines.append(f"  {p['answer']}  (characters {p['start']}-{p['end']} of the passage)")
        else:
            lines.append(f"  {p['generated']}")
    return "\n".join(lines)


def predict(
    cluster: Cluster,
    job: dict[str, Any],
    texts: Sequence[str],
    *,
    context: str | None,
    cache_dir: Path,
    say: Callable[[str], None],
    s3_endpoint: str | None = None,
) -> list[dict[str, Any]]:
    """Download the job's final model (merged when there is one) and run its task on the texts.

    ``s3_endpoint`` replaces spec.output.s3.endpoint: S3 as this machine reaches it, when the pods
    reach it by an in-cluster name.
    """
    import copy

    from finetune_api.validation import parse_spec

    raw = copy.deepcopy(job["spec"])
    if s3_endpoint and (raw.get("output") or {}).get("s3"):
        raw["output"]["s3"]["endpoint"] = s3_endpoint
    spec = parse_spec(raw)
    artifacts = (job.get("status") or {}).get("artifacts") or {}
    uri = artifacts.get("mergedModel") or artifacts.get("model")
    if not uri:
        raise CommandError(
            f'finetunejob "{job["metadata"]["name"]}" has no final model yet (status.artifacts.model is empty; '
            f"phase {(job.get('status') or {}).get('phase') or 'Pending'})"
        )
    if spec.output.s3 is None:
        raise CommandError("the job has no output.s3: its artifacts are not in S3")
    meta = job["metadata"]
    dest = (
        cache_dir
        / meta["namespace"]
        / meta["name"]
        / meta.get("uid", "-")
        / ("merged" if artifacts.get("mergedModel") else "final")
    )
    from finetune_trainer.errors import TrainerError

    with environment(job_credentials(cluster, job, say)):
        try:
            download(spec, uri, dest)
            model, tokenizer = load(spec, dest, merged=bool(artifacts.get("mergedModel")))
        except TrainerError as err:  # refused credentials, a missing bucket, a base model not found
            raise CommandError(f"cannot load the model of {uri}: {err}") from None
    return run_task(spec.task.type, model, tokenizer, texts, context=context, multi_label=spec.task.multi_label)
