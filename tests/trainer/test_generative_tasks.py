"""causal-lm and preference train through engine.train on a tiny random Llama, with every method.

causal-lm runs each method on the text, alpaca and chatml formats (and lora on messages); preference
runs each method on prompt/chosen/rejected text (and lora on chat turns). Each run must lower the
training loss, write its artifacts, and reload into a model with the same logits. Around the runs:
which tokens the loss covers per format, packing, the DPO reference policy, and the data errors.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import pytest

from finetune_api.validation import load_spec_file, parse_spec
from finetune_trainer.errors import ConfigError, DataError
from tests.trainer import tiny, tiny_causal

# Learning rates that move the tiny random model within 16 steps: adapters and soft prompts need far
# larger steps than the full model.
SFT_RATES = {
    "full": 3e-3,
    "freeze": 3e-3,
    "lora": 2e-2,
    "qlora": 2e-2,
    "ia3": 1e-1,
    "prompt-tuning": 3e-1,
    "p-tuning": 1e-2,
    "prefix-tuning": 3e-2,
}
DPO_RATES = {
    "full": 1e-3,
    "freeze": 1e-3,
    "lora": 1e-2,
    "qlora": 1e-2,
    "ia3": 5e-2,
    "prompt-tuning": 1e-1,
    "p-tuning": 1e-2,
    "prefix-tuning": 1e-2,
}
REWARD_RATES = {"full": 1e-3, "feature-extraction": 3e-2, "lora": 1e-2, "qlora": 1e-2}
SEQ2SEQ_RATES = {"full": 3e-3, "lora": 3e-2}
# ORPO and KTO: the DPO rates; KTO runs both reference paths (adapter off, frozen copy), ORPO has none.
ALIGNMENT_CASES = {"orpo": ("lora",), "kto": ("full", "lora")}
ADAPTER_METHODS = ("lora", "qlora", "ia3", "prompt-tuning", "p-tuning", "prefix-tuning")
NEW_METHODS = ("freeze", "ia3", "p-tuning", "prefix-tuning")
PROBE_TEXTS = ["the apple is red and the", "Repeat the word: seven."]


@dataclass(frozen=True)
class Case:
    """One task x method x format run."""

    task: str
    method: str
    format: str = "text"  # causal-lm: task.format; preference: text or chat
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.task}-{self.method}-{self.format}"


CASES = [
    *[
        Case("causal-lm", m, f)
        for m in ("full", "lora", "qlora", "prompt-tuning")
        for f in ("text", "alpaca", "chatml")
    ],
    # Evaluation and checkpoints during training: the best checkpoint is loaded at the end.
    Case(
        "causal-lm",
        "lora",
        "messages",
        {"evalStrategy": "steps", "evalSteps": 8, "saveStrategy": "steps", "saveSteps": 8, "loadBestModelAtEnd": True},
    ),
    *[Case("causal-lm", m) for m in NEW_METHODS],
    *[Case("preference", m) for m in ("full", "lora", "qlora", "prompt-tuning", *NEW_METHODS)],
    *[Case("reward-modeling", m) for m in ("full", "feature-extraction", "lora", "qlora")],
    Case("preference", "lora", "chat"),
    # Summarisation on a tiny T5, with a test file: generation and ROUGE at evaluation.
    *[Case("seq2seq", m) for m in SEQ2SEQ_RATES],
    *[Case(task, m) for task, methods in ALIGNMENT_CASES.items() for m in methods],
]


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of the tiny random Llama and its locally trained tokenizer."""
    return tiny_causal.cached_tiny_causal(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of the tiny random T5 and the same tokenizer."""
    return tiny_causal.cached_tiny_seq2seq(tmp_path_factory)


@pytest.fixture(scope="session")
def generative_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """Train/validation files per format, spread over csv, parquet and jsonl."""
    root = tmp_path_factory.mktemp("generative-data")

    def files(name: str, rows: Any, writer: Any, ext: str) -> dict[str, str]:
        return {
            "train": str(writer(root / f"{name}-train.{ext}", rows(64, seed=0))),
            "validation": str(writer(root / f"{name}-val.{ext}", rows(16, seed=1))),
        }

    return {
        "text": files("text", tiny_causal.text_rows, tiny.write_csv, "csv"),
        "alpaca": files("alpaca", tiny_causal.alpaca_rows, tiny.write_parquet, "parquet"),
        "chat": files("chat", tiny_causal.chat_rows, tiny.write_jsonl, "jsonl"),
        "pairs": files("pairs", tiny_causal.preference_rows, tiny.write_jsonl, "jsonl"),
        "chat-pairs": files(
            "chat-pairs",
            lambda n, seed: tiny_causal.preference_rows(n, seed, conversational=True),
            tiny.write_parquet,
            "parquet",
        ),
        "feedback": files("feedback", tiny_causal.feedback_rows, tiny.write_jsonl, "jsonl"),
        "summaries": {
            **files("summaries", tiny_causal.summary_rows, tiny.write_jsonl, "jsonl"),
            "test": str(tiny.write_jsonl(root / "summaries-test.jsonl", tiny_causal.summary_rows(8, seed=2))),
        },
    }


def spec_for(case: Case, model_dir: Path, data: dict[str, dict[str, str]]) -> dict[str, Any]:
    """The spec dict of a case."""
    training = dict(case.training)
    if case.task == "causal-lm":
        task: dict[str, Any] = {"type": "causal-lm", "format": case.format}
        files = data["chat" if case.format in ("chatml", "messages") else case.format]
        rate = SFT_RATES[case.method]
    elif case.task == "seq2seq":
        task = {"type": "seq2seq"}
        files = data["summaries"]
        rate = SEQ2SEQ_RATES[case.method]
        # Generation at evaluation is cheap at this length; 32 steps take ROUGE well past chance.
        training = {"maxSteps": 32, "maxSeqLength": 32, **training}
    else:
        task = {"type": case.task}
        files = data["chat-pairs" if case.format == "chat" else "feedback" if case.task == "kto" else "pairs"]
        rate = REWARD_RATES[case.method] if case.task == "reward-modeling" else DPO_RATES[case.method]
        if case.task == "orpo":
            # The odds-ratio term weighs as much as the NLL term, and a larger step: 32 steps then order the pairs.
            rate, training = 2 * rate, {"orpo": {"beta": 1.0}, **training}
        # Preference losses are noisy per batch of 8 pairs: more steps to see the trend.
        training = {"maxSteps": 32, **training}
    method: dict[str, Any] = {"type": case.method}
    if case.method in ("lora", "qlora"):
        method["lora"] = {"r": 8, "alpha": 16, "dropout": 0.0}
    if case.method == "prompt-tuning":
        method["promptTuning"] = {"numVirtualTokens": 4, "initText": "Repeat the word"}
    if case.method == "p-tuning":
        method["pTuning"] = {"numVirtualTokens": 4}
    if case.method == "prefix-tuning":
        method["prefixTuning"] = {"numVirtualTokens": 4}
    if case.method == "freeze":
        method["freeze"] = {"trainableLayers": 1}
    return tiny_causal.causal_spec(model_dir, task, files, method, learningRate=rate, **training)


def probe_logits(model: Any, tokenizer: Any) -> Any:
    """Next-token logits of the model on fixed texts."""
    import torch

    batch = tokenizer(PROBE_TEXTS, padding=True, return_tensors="pt")
    if model.config.is_encoder_decoder:  # the decoder reads the first few tokens of the same texts
        batch["decoder_input_ids"] = batch["input_ids"][:, :4]
    model.eval()
    with torch.no_grad():
        return model(**batch).logits.detach().float().clone()


@dataclass
class Trained:
    case: Case
    output_dir: Path
    result: Any
    in_memory: Any


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c.id)
def trained(
    request: pytest.FixtureRequest,
    tiny_llama: Path,
    generative_data: dict[str, dict[str, str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Trained:
    """One short training run per case, shared by the tests below."""
    from finetune_trainer import engine

    case: Case = request.param
    model_dir = request.getfixturevalue("tiny_t5") if case.task == "seq2seq" else tiny_llama
    spec = parse_spec(spec_for(case, model_dir, generative_data))
    output_dir = tmp_path_factory.mktemp(case.id)
    result = engine.train(spec, output_dir)
    return Trained(case, output_dir, result, probe_logits(result.model, result.tokenizer))


@pytest.mark.slow
def test_training_loss_falls(trained: Trained) -> None:
    losses = [entry["loss"] for entry in trained.result.trainer.state.log_history if "loss" in entry]
    assert len(losses) >= 12
    third = len(losses) // 3
    first, last = sum(losses[:third]) / third, sum(losses[-third:]) / third
    # DPO starts at ln 2 and moves in small steps; language modelling starts near ln(vocabulary).
    margin = 0.05 if trained.case.task == "causal-lm" else 0.02
    assert last < first - margin, f"loss did not fall: {losses}"


@pytest.mark.slow
def test_artifacts_are_written(trained: Trained) -> None:
    out = trained.output_dir
    if trained.case.method in ADAPTER_METHODS:
        assert (out / "adapter_config.json").is_file()
        assert (out / "adapter_model.safetensors").is_file()
        assert not (out / "model.safetensors").exists()
        # The reference policy is the base with the adapter off: no reference adapter is saved beside it.
        assert not (out / "ref").exists()
    else:
        assert (out / "model.safetensors").is_file()
    assert (out / "tokenizer.json").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 < metrics["trainable_parameters"] <= metrics["total_parameters"]
    best = {"reward-modeling": "accuracy", "seq2seq": "rougeL"}.get(trained.case.task, "eval_loss")
    assert load_spec_file(out / "spec.resolved.yaml").training.metric_for_best_model == best
    if trained.case.task == "causal-lm":
        assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]), rel=1e-6)
    elif trained.case.task == "seq2seq":
        # Chance: always the commonest word and colour scores ROUGE-L about (1/20 + 1/4) / 2 = 0.15.
        assert metrics["eval_rougeL"] > 0.3 and metrics["test_rougeL"] > 0.3, metrics
        assert 1 <= metrics["eval_gen_len"] < 32
    elif trained.case.task == "reward-modeling":
        # Held-out pairs whose chosen response scores higher: above chance (0.5) after training.
        assert metrics["eval_accuracy"] > 0.6, metrics
    elif trained.case.task == "kto":
        for key in ("eval_loss", "eval_kl", "eval_rewards/chosen", "eval_rewards/rejected", "eval_rewards/margins"):
            assert key in metrics, key
        # Chance is 0: the reference scores desirable and undesirable completions alike.
        assert metrics["eval_rewards/margins"] > 0, metrics
    else:
        for key in ("eval_loss", "eval_rewards/chosen", "eval_rewards/accuracies", "eval_rewards/margins"):
            assert key in metrics, key
        if trained.case.task == "orpo":
            assert "eval_nll_loss" in metrics and "eval_log_odds_ratio" in metrics
            assert metrics["eval_rewards/accuracies"] > 0.5, metrics  # chance: half the pairs


@pytest.mark.slow
def test_reloaded_model_gives_the_same_logits(trained: Trained) -> None:
    import torch

    from finetune_trainer import engine

    loaded = engine.load_for_inference(trained.output_dir)
    reloaded = probe_logits(loaded.model, loaded.tokenizer)
    if trained.case.method != "qlora":
        torch.testing.assert_close(reloaded, trained.in_memory, rtol=1e-4, atol=1e-5)
        return
    # QLoRA trains its adapter in bfloat16 (TRL's cast) over the 4-bit base; peft reloads the adapter in
    # float32 and bitsandbytes evaluates with its CPU inference kernel: equal up to bfloat16 rounding ...
    torch.testing.assert_close(reloaded, trained.in_memory, rtol=5e-2, atol=5e-2)
    # ... and exactly equal when the reloaded model computes as the trained one did.
    from finetune_trainer.methods.qlora import cast_inputs_of_trained_copies, keep_cpu_weights_trainable

    again = engine.load_for_inference(trained.output_dir).model
    keep_cpu_weights_trainable(again)
    for name, param in again.named_parameters():
        if "lora_" in name or "modules_to_save" in name:  # the reward model's score head trained in bfloat16 too
            param.data = param.data.to(torch.bfloat16)
    cast_inputs_of_trained_copies(again)
    torch.testing.assert_close(probe_logits(again, loaded.tokenizer), trained.in_memory, rtol=0, atol=0)


@pytest.mark.slow
def test_seq2seq_test_rouge_is_that_of_the_saved_model_s_generations(trained: Trained) -> None:
    if trained.case.task != "seq2seq":
        pytest.skip("seq2seq only")
    import torch
    from rouge_score import rouge_scorer

    from finetune_trainer import engine

    loaded = engine.load_for_inference(trained.output_dir)
    rows = tiny_causal.summary_rows(8, seed=2)  # the test file
    batch = loaded.tokenizer([r["source"] for r in rows], padding=True, return_tensors="pt")
    with torch.no_grad():
        ids = loaded.model.generate(**batch, max_length=32, num_beams=1, do_sample=False)
    texts = loaded.tokenizer.batch_decode(ids, skip_special_tokens=True)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(r["target"], t.strip())["rougeL"].fmeasure for r, t in zip(rows, texts, strict=True)]
    metrics = json.loads((trained.output_dir / "metrics.json").read_text())
    assert metrics["test_rougeL"] == pytest.approx(sum(scores) / len(scores), abs=1e-9)


@pytest.mark.slow
def test_sample_generations_are_the_saved_model_s_greedy_answers(trained: Trained) -> None:
    case = trained.case
    samples_file = trained.output_dir / "samples.jsonl"
    if case.task == "reward-modeling" or (case.task == "causal-lm" and case.format == "text"):
        assert not samples_file.exists()  # a scorer generates nothing; plain text has no prompt
        return
    import torch

    from finetune_trainer import engine

    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    assert len(samples) == 3
    first = samples[0]
    if case.task == "seq2seq":  # the test split's rows
        row = tiny_causal.summary_rows(8, seed=2)[0]
        assert (first["prompt"], first["reference"]) == (row["source"], row["target"])
    elif case.format == "alpaca":
        row = tiny_causal.alpaca_rows(16, seed=1)[0]
        assert row["instruction"] in first["prompt"] and first["reference"] == row["output"]
    elif case.task in ("preference", "orpo", "kto") and case.format == "text":
        assert first["prompt"] == tiny_causal.preference_rows(16, seed=1)[0]["prompt"]
    else:  # chat turns: the prompt ends where the assistant's reply starts
        assert first["prompt"].endswith("<|im_start|>assistant\n")
    if case.method == "qlora":
        return  # the reloaded 4-bit model computes in another precision (see the logits test)
    # The first sample regenerated from the saved artifacts (one keeps the suite short; all share the code path).
    loaded = engine.load_for_inference(trained.output_dir)
    inputs = loaded.tokenizer(first["prompt"], return_tensors="pt")
    with torch.no_grad():
        ids = loaded.model.generate(**inputs, max_new_tokens=64, do_sample=False)
    if not loaded.model.config.is_encoder_decoder:
        ids = ids[:, inputs["input_ids"].shape[1] :]
    assert loaded.tokenizer.decode(ids[0], skip_special_tokens=True).strip() == first["generated"]


@pytest.mark.slow
def test_only_the_method_s_parameters_train(trained: Trained) -> None:
    metrics = trained.result.metrics
    trainable, total = metrics["trainable_parameters"], metrics["total_parameters"]
    if trained.case.method == "full":
        assert trainable == total
    elif trained.case.method == "freeze":
        assert 0 < trainable < total
    else:
        assert trainable < 0.1 * total


@pytest.mark.slow
def test_the_dpo_reference_is_the_adapter_free_base_or_a_frozen_copy(trained: Trained) -> None:
    if trained.case.task not in ("preference", "kto"):
        pytest.skip("only DPO and KTO have a reference policy")
    from peft import PeftModel

    trainer = trained.result.trainer
    if trained.case.method in ADAPTER_METHODS:
        assert trainer.ref_model is None  # no second model in memory
        assert isinstance(trainer.model, PeftModel)
        assert list(trainer.model.peft_config) == ["default"]  # no copied reference adapter either
    else:
        import torch

        assert trainer.ref_model is not None and trainer.ref_model is not trainer.model
        assert not any(p.requires_grad for p in trainer.ref_model.parameters())
        # The copy stayed the base while the policy moved away from it.
        policy, reference = trainer.model.state_dict(), trainer.ref_model.state_dict()
        name = "model.layers.1.self_attn.q_proj.weight"  # the last layer: it trains under freeze too
        assert not torch.equal(policy[name], reference[name])
        base = engine_base_weights(trained)
        torch.testing.assert_close(reference[name], base[name], rtol=0, atol=0)


def engine_base_weights(trained: Trained) -> dict[str, Any]:
    """The base checkpoint's tensors."""
    from safetensors.torch import load_file

    spec = load_spec_file(trained.output_dir / "spec.resolved.yaml")
    return load_file(str(Path(str(spec.model.path)) / "model.safetensors"))


# ---- which tokens the loss covers, packing, the reference at step 0: trainers built without training ----


def build_trainer(spec_dict: dict[str, Any], output_dir: Path) -> Any:
    """The task's trainer for a spec, assembled as engine.train assembles it, without training."""
    from finetune_trainer import engine
    from finetune_trainer.arguments import DeviceCapability, training_kwargs
    from finetune_trainer.data import load_datasets
    from finetune_trainer.methods import get_method
    from finetune_trainer.tasks import get_task
    from finetune_trainer.tasks.base import RunContext
    from finetune_trainer.world import WorldInfo

    spec = parse_spec(spec_dict)
    task, method = get_task(spec.task.type), get_method(spec.method.type)
    model_path = engine.resolve_model_location(spec.model)
    tokenizer = engine.load_tokenizer(spec, model_path)
    datasets = load_datasets(spec)
    task.check_dataset(spec, datasets)
    device = DeviceCapability.detect()
    kwargs = training_kwargs(
        spec,
        output_dir,
        world=WorldInfo(),
        device=device,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        distributed_kwargs=engine.distributed_kwargs(spec, device),
    )
    model = method.prepare(spec, task.load_model(spec, model_path, method.load_kwargs(spec)), task.peft_task_type)
    ctx = RunContext(spec, output_dir, model_path, tokenizer, method, datasets, kwargs)
    return task.build_trainer(ctx, model)


def trained_text(trainer: Any, index: int = 0) -> tuple[str, str]:
    """(whole example, the part with labels) of one prepared training example, decoded."""
    example = trainer.train_dataset[index]
    ids, labels = example["input_ids"], example["labels"]
    decode = trainer.processing_class.decode
    return decode(ids), decode([i for i, label in zip(ids, labels, strict=True) if label != -100])


def sft_spec(tiny_llama: Path, data: dict[str, dict[str, str]], fmt: str, **training: Any) -> dict[str, Any]:
    files = data["chat" if fmt in ("chatml", "messages") else fmt]
    return tiny_causal.causal_spec(
        tiny_llama, {"type": "causal-lm", "format": fmt}, files, {"type": "lora"}, **training
    )


def test_text_format_trains_on_every_token(tiny_llama: Path, generative_data: dict, tmp_path: Path) -> None:
    trainer = build_trainer(sft_spec(tiny_llama, generative_data, "text"), tmp_path)
    whole, labelled = trained_text(trainer)
    assert labelled == whole and whole.endswith("<|endoftext|>")


def test_alpaca_prompt_tokens_get_label_minus_100(tiny_llama: Path, generative_data: dict, tmp_path: Path) -> None:
    trainer = build_trainer(sft_spec(tiny_llama, generative_data, "alpaca"), tmp_path)
    row = tiny_causal.alpaca_rows(64, seed=0)[0]
    whole, labelled = trained_text(trainer)
    assert "### Instruction:" in whole and row["instruction"] in whole
    assert labelled == row["output"] + "<|endoftext|>"


def test_chatml_trains_on_every_assistant_turn_only(tiny_llama: Path, generative_data: dict, tmp_path: Path) -> None:
    trainer = build_trainer(sft_spec(tiny_llama, generative_data, "chatml"), tmp_path)
    turns = tiny_causal.chat_rows(64, seed=0)[0]["messages"]
    whole, labelled = trained_text(trainer)
    assert whole.startswith("<|im_start|>system\n")
    replies = [t["content"] for t in turns if t["role"] == "assistant"]
    # Each reply with its end-of-turn token (the model learns to stop), nothing of system or user.
    assert labelled == "".join(reply + "<|im_end|>" for reply in replies)


def test_messages_without_template_markers_train_on_the_last_reply(
    tiny_llama: Path, generative_data: dict, tmp_path: Path
) -> None:
    # The tiny tokenizer's own ChatML template has no {% generation %} markers.
    trainer = build_trainer(sft_spec(tiny_llama, generative_data, "messages"), tmp_path)
    turns = tiny_causal.chat_rows(64, seed=0)[0]["messages"]
    whole, labelled = trained_text(trainer)
    assert turns[2]["content"] in whole  # the first reply is context
    assert labelled.startswith(turns[-1]["content"] + "<|im_end|>")
    assert turns[2]["content"] not in labelled


def test_messages_needs_a_chat_template(tiny_llama: Path, generative_data: dict, tmp_path: Path) -> None:
    import shutil

    bare = tmp_path / "no-template"
    shutil.copytree(tiny_llama, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    spec = sft_spec(bare, generative_data, "messages")
    with pytest.raises(ConfigError, match=r"has none; use task\.format chatml"):
        build_trainer(spec, tmp_path / "out")
    # validate finds it too, from the tokenizer alone.
    from datasets import DatasetDict
    from transformers import AutoTokenizer

    from finetune_trainer.tasks.causal_lm import CausalLmTask

    with pytest.raises(ConfigError, match=r"task\.format: messages"):
        CausalLmTask().check_with_tokenizer(parse_spec(spec), DatasetDict(), AutoTokenizer.from_pretrained(bare))


def test_packing_keeps_documents_apart_and_prompts_out_of_the_loss(
    tiny_llama: Path, generative_data: dict, tmp_path: Path
) -> None:
    trainer = build_trainer(sft_spec(tiny_llama, generative_data, "alpaca", packing=True, maxSeqLength=256), tmp_path)
    packed = trainer.train_dataset
    assert len(packed) < 64 and "seq_lengths" in packed.column_names
    batch = trainer.data_collator([packed[0]])
    lengths = packed[0]["seq_lengths"]
    assert len(lengths) > 1  # several examples in one sequence
    # Positions restart at each document (the attention mask is block-diagonal from them) ...
    positions = batch["position_ids"][0].tolist()
    starts = [i for i, p in enumerate(positions) if p == 0]
    assert len(starts) == len(lengths)
    # ... and the labels still cover only each document's response.
    _, labelled = trained_text(trainer)
    assert "### Instruction:" not in labelled and labelled.count("<|endoftext|>") == len(lengths)


@pytest.mark.slow
def test_packed_training_lowers_the_loss(tiny_llama: Path, generative_data: dict, tmp_path: Path) -> None:
    trainer = build_trainer(
        sft_spec(tiny_llama, generative_data, "text", packing=True, maxSeqLength=64, learningRate=2e-2), tmp_path
    )
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05, losses


def dpo_spec(tiny_llama: Path, data: dict[str, dict[str, str]], method: str, **extra: Any) -> dict[str, Any]:
    method_spec: dict[str, Any] = {"type": method}
    return tiny_causal.causal_spec(tiny_llama, {"type": "preference"}, data["pairs"], method_spec, **extra)


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_dpo_reference_equals_the_starting_policy(
    method: str, tiny_llama: Path, generative_data: dict, tmp_path: Path
) -> None:
    # A fresh LoRA adapter changes nothing, so the adapter-free base is exactly the starting policy:
    # before any step every implicit reward is zero.
    trainer = build_trainer(dpo_spec(tiny_llama, generative_data, method), tmp_path)
    metrics = trainer.evaluate()
    assert metrics["eval_rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["eval_rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["eval_loss"] == pytest.approx(math.log(2), abs=1e-5)


def test_dpo_keeps_the_end_of_long_prompts(tiny_llama: Path, generative_data: dict, tmp_path: Path) -> None:
    spec = dpo_spec(tiny_llama, generative_data, "lora", dpo={"maxPromptLength": 3})
    trainer = build_trainer(spec, tmp_path)
    row = tiny_causal.preference_rows(64, seed=0)[0]
    prompt_ids = trainer.train_dataset[0]["prompt_ids"]
    assert len(prompt_ids) == 3
    full = trainer.processing_class(row["prompt"])["input_ids"]
    assert prompt_ids == full[-3:]


def test_dpo_settings_reach_the_trainer(tiny_llama: Path, generative_data: dict, tmp_path: Path) -> None:
    spec = dpo_spec(tiny_llama, generative_data, "lora", dpo={"beta": 0.3, "lossType": "ipo"}, maxSeqLength=96)
    trainer = build_trainer(spec, tmp_path)
    assert trainer.args.beta == 0.3 and trainer.args.loss_type == ["ipo"] and trainer.args.max_length == 96
    # TRL's own defaults (bf16, activation checkpointing) do not leak in: the spec decides.
    assert trainer.args.bf16 is False and trainer.args.activation_checkpointing is False


def test_every_dpo_loss_variant_gives_a_finite_loss(tiny_llama: Path, generative_data: dict, tmp_path: Path) -> None:
    import torch

    from finetune_api.spec import DpoLoss

    trainer = build_trainer(dpo_spec(tiny_llama, generative_data, "lora", dpo={"lossType": "ipo"}), tmp_path)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    losses = {}
    for loss_type in get_args(DpoLoss):
        # The trainer reads its loss list at every step; one trainer serves every variant on the same batch.
        trainer.loss_types, trainer.loss_weights = [loss_type], [1.0]
        with torch.no_grad():
            losses[loss_type] = float(trainer.compute_loss(trainer.model, batch))
    assert all(math.isfinite(v) for v in losses.values()), losses
    # At the start the policy equals the reference: DPO is ln 2, IPO (x - 1/(2 beta))^2 = 25 for beta 0.1.
    assert losses["sigmoid"] == pytest.approx(math.log(2), abs=1e-4)
    assert losses["ipo"] == pytest.approx(25.0, abs=1e-2)


# ---- data errors: name the split, row, column and the fix ----


def check(task_type: str, rows: list[dict[str, Any]], fmt: str | None = None, columns: dict | None = None) -> None:
    from datasets import Dataset, DatasetDict

    from finetune_trainer.tasks import get_task

    task: dict[str, Any] = {"type": task_type}
    if fmt:
        task["format"] = fmt
    if columns:
        task["columns"] = columns
    spec = parse_spec(tiny_causal.causal_spec(Path("/models/x"), task, {"train": "/data/train.jsonl"}))
    get_task(task_type).check_dataset(spec, DatasetDict({"train": Dataset.from_list(rows)}))


def test_missing_alpaca_output_column_is_named() -> None:
    with pytest.raises(DataError, match=r"no column 'output'.*task\.columns\.output"):
        check("causal-lm", [{"instruction": "say hi", "input": ""}], "alpaca")


def test_alpaca_input_column_may_be_absent() -> None:
    check("causal-lm", [{"instruction": "say hi", "output": "hi"}], "alpaca")


def test_mapped_columns_are_read() -> None:
    check("causal-lm", [{"body": "some text"}], "text", {"text": "body"})
    with pytest.raises(DataError, match="no column 'body'"):
        check("causal-lm", [{"text": "some text"}], "text", {"text": "body"})


def test_text_column_must_hold_text() -> None:
    with pytest.raises(DataError, match=r"column 'text' \(text role\).*not text"):
        check("causal-lm", [{"text": 3}], "text")


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        ("hello", "expected a list"),
        ([{"role": "bot", "content": "hi"}], "role 'bot'"),
        ([{"role": "user", "content": "hi"}], "no assistant turn"),
        ([{"role": "user", "content": ["hi"]}], "content must be a string"),
        ([], "empty"),
    ],
    ids=["not-a-list", "unknown-role", "no-assistant", "non-text-content", "empty"],
)
def test_malformed_messages_are_refused(messages: Any, fragment: str) -> None:
    with pytest.raises(DataError, match=r"row 0, column 'messages': \(messages role\)") as err:
        check("causal-lm", [{"messages": messages}], "chatml")
    assert fragment in str(err.value)


def test_the_first_malformed_conversation_is_named_by_row() -> None:
    good = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    bad = [{"role": "user", "content": "hi"}, {"role": "bot", "content": "hello"}]
    with pytest.raises(DataError, match=r"row 2, column 'messages'.*turn 1 has role 'bot'"):
        check("causal-lm", [{"messages": good}, {"messages": good}, {"messages": bad}], "messages")


def test_every_malformed_conversation_is_reported_at_once() -> None:
    good = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    no_answer = [{"role": "user", "content": "hi"}]
    bot = [{"role": "user", "content": "hi"}, {"role": "bot", "content": "hello"}]
    rows = [{"messages": no_answer}, {"messages": good}, {"messages": bot}, {"messages": no_answer}]
    with pytest.raises(DataError) as err:
        check("causal-lm", rows, "messages")
    message = str(err.value)
    assert message.startswith("2 problems in the data")
    assert "rows 0, 3, column 'messages'" in message and "no assistant turn" in message
    assert "row 2, column 'messages'" in message and "turn 1 has role 'bot'" in message


def test_problems_of_every_split_and_role_are_reported_at_once() -> None:
    from datasets import Dataset, DatasetDict

    from finetune_trainer.tasks import get_task

    spec = parse_spec(
        tiny_causal.causal_spec(
            Path("/models/x"), {"type": "preference"}, {"train": "/data/train.jsonl", "validation": "/data/eval.jsonl"}
        )
    )
    splits = DatasetDict(
        {
            "train": Dataset.from_list([{"prompt": "p", "chosen": 1, "rejected": "r"}]),
            "eval": Dataset.from_list([{"prompt": "p", "chosen": "c"}]),
        }
    )
    with pytest.raises(DataError) as err:
        get_task("preference").check_dataset(spec, splits)
    message = str(err.value)
    assert message.startswith("2 problems in the data")
    assert "row 0, column 'chosen' (chosen role): expected text" in message  # train
    assert "has no column 'rejected' for the rejected role" in message  # eval


def test_messages_as_json_strings_are_accepted() -> None:
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    check("causal-lm", [{"messages": json.dumps(turns)}], "messages")


def test_preference_needs_chosen_and_rejected() -> None:
    with pytest.raises(DataError, match="no column 'rejected'"):
        check("preference", [{"prompt": "p", "chosen": "a"}])


def test_preference_text_pairs_need_a_prompt() -> None:
    with pytest.raises(DataError, match="no column 'prompt'"):
        check("preference", [{"chosen": "a", "rejected": "b"}])


def test_preference_conversations_may_carry_their_prompt() -> None:
    user = {"role": "user", "content": "hi"}
    check(
        "preference",
        [
            {
                "chosen": [user, {"role": "assistant", "content": "a"}],
                "rejected": [user, {"role": "assistant", "content": "b"}],
            }
        ],
    )


def test_kto_needs_a_true_or_false_label_per_row() -> None:
    with pytest.raises(DataError, match="no column 'label'"):
        check("kto", [{"prompt": "p", "completion": "a"}])
    with pytest.raises(DataError, match=r"row 1, column 'label': \(label role\) expected true \(desirable\)"):
        check("kto", [{"prompt": "p", "completion": "a", "label": v} for v in ("yes", "maybe")])


def test_preference_refuses_text_mixed_with_turns() -> None:
    with pytest.raises(DataError, match="must all hold text or all hold chat turns"):
        check("preference", [{"prompt": "p", "chosen": "a", "rejected": [{"role": "assistant", "content": "b"}]}])
