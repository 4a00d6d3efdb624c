"""A tiny random Llama-style causal LM and a tokenizer trained here, for the generative trainer tests.

Nothing is downloaded: the tokenizer is a byte-level BPE trained with the ``tokenizers`` library on
generated sentences (so every string round-trips), with ``<|endoftext|>``, ``<|pad|>``,
``<|im_start|>`` and ``<|im_end|>`` as special tokens and a ChatML chat template; the model is a
2-layer ``LlamaForCausalLM`` with random weights built from a config. Sizes are multiples of 64 so
bitsandbytes can quantise every projection to 4 bits.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

EOS = "<|endoftext|>"
PAD = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [EOS, PAD, IM_START, IM_END]

# ChatML as most chat models ship it: no {% generation %} markers, so assistant-only masking has to
# come from somewhere else (the trainer's own ChatML template, or a prompt/completion split).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

WORDS = [
    "apple", "river", "stone", "cloud", "green", "seven", "quiet", "north", "bread", "light",
    "tiger", "paper", "music", "ocean", "glass", "sugar", "horse", "candle", "forest", "silver",
]  # fmt: skip
COLOURS = ["red", "blue", "green", "black"]
CHAT_SYSTEM = "You are a helpful assistant."


def sentence(rng: random.Random) -> str:
    """A short sentence with an easy, learnable pattern (a word, then the same word repeated)."""
    word = rng.choice(WORDS)
    return f"the {word} is {rng.choice(COLOURS)} and the {word} is here."


def _corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = [sentence(rng) for _ in range(n)]
    lines += [f"Repeat the word: {w}. {w} {w}" for w in WORDS]
    lines += [f"### Instruction:\nName the colour of {w}.\n\n### Response:\n{c}" for w in WORDS for c in COLOURS]
    lines += [f"user\nSay {w}.\nassistant\n{w} {w}." for w in WORDS]
    # The Alpaca preamble, so the alpaca prompt stays a few dozen tokens long with this small vocabulary.
    lines += [
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.",
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
        "### Instruction:\n### Input:\n### Response:\n",
    ] * 20
    return lines


def build_tokenizer(directory: Path) -> Any:
    """Train a small byte-level BPE tokenizer and save it (with the ChatML template) in ``directory``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=None,
        additional_special_tokens=[IM_START, IM_END],
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(str(directory))
    return fast


def build_model(directory: Path, vocab_size: int, *, hidden: int = 64, layers: int = 2, seed: int = 0) -> Any:
    """Save a random-initialised 2-layer Llama causal LM (fp32) in ``directory``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        # Larger random weights than the default 0.02, so the outputs depend on the input: a soft prompt
        # or an adapter then has something to steer (near-uniform logits would ignore them).
        initializer_range=0.1,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=0,
        pad_token_id=1,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(directory))
    return model


def build_tiny_seq2seq(directory: Path, *, hidden: int = 64, seed: int = 0) -> Path:
    """A random 2+2-layer T5 (fp32) beside the same tokenizer, in ``directory``; decoding starts from the pad id."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(directory)
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=hidden,
        d_kv=hidden // 4,
        d_ff=hidden * 2,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        dropout_rate=0.0,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    T5ForConditionalGeneration(config).save_pretrained(str(directory))
    return directory


def build_tiny_causal(directory: Path) -> Path:
    """Tokenizer and model side by side in ``directory`` (a local model path, like a volume mount)."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(directory)
    build_model(directory, vocab_size=len(tokenizer))
    return directory


# ---- datasets in every format the causal-lm and preference tasks read ----


def text_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Plain text rows (format text)."""
    rng = random.Random(seed)
    return [{"text": sentence(rng)} for _ in range(n)]


def alpaca_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """instruction / input / output rows (format alpaca); every other row has an empty input."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        word = rng.choice(WORDS)
        if i % 2:
            rows.append({"instruction": "Repeat the word twice.", "input": word, "output": f"{word} {word}"})
        else:
            rows.append({"instruction": f"Repeat the word: {word}.", "input": "", "output": f"{word} {word}"})
    return rows


def chat_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """messages rows (formats chatml and messages): system, user, assistant, and a second exchange."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.choice(WORDS), rng.choice(WORDS)
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": CHAT_SYSTEM},
                    {"role": "user", "content": f"Say {a}."},
                    {"role": "assistant", "content": f"{a} {a}."},
                    {"role": "user", "content": f"Say {b}."},
                    {"role": "assistant", "content": f"{b} {b}."},
                ]
            }
        )
    return rows


def summary_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """source / target rows (task seq2seq): a sentence and its two content words."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        word, colour = rng.choice(WORDS), rng.choice(COLOURS)
        rows.append({"source": f"the {word} is {colour} and the {word} is here.", "target": f"{word} {colour}"})
    return rows


def preference_rows(n: int, seed: int = 0, *, conversational: bool = False) -> list[dict[str, Any]]:
    """prompt / chosen / rejected rows; plain strings or chat messages."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for _ in range(n):
        word = rng.choice(WORDS)
        other = rng.choice([w for w in WORDS if w != word])
        prompt, chosen, rejected = f"Repeat the word: {word}.", f" {word} {word}", f" {other} {other}"
        if conversational:
            rows.append(
                {
                    "prompt": [{"role": "user", "content": prompt}],
                    "chosen": [{"role": "assistant", "content": chosen.strip()}],
                    "rejected": [{"role": "assistant", "content": rejected.strip()}],
                }
            )
        else:
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def feedback_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """prompt / completion / label rows (task kto): the pairs of preference_rows, unpaired, alternating kinds."""
    rows = []
    for i, pair in enumerate(preference_rows(n, seed)):
        desirable = i % 2 == 0
        rows.append(
            {"prompt": pair["prompt"], "completion": pair["chosen" if desirable else "rejected"], "label": desirable}
        )
    return rows


# ---- building once per test session, and specs ----

_BUILT: dict[str, Path] = {}


def cached_tiny_causal(factory: Any) -> Path:
    """The tiny causal LM directory, built once per test process (``factory`` is pytest's tmp_path_factory)."""
    if "model" not in _BUILT:
        _BUILT["model"] = build_tiny_causal(factory.mktemp("tiny-causal"))
    return _BUILT["model"]


def cached_tiny_seq2seq(factory: Any) -> Path:
    """The tiny T5 directory, built once per test process."""
    if "seq2seq" not in _BUILT:
        _BUILT["seq2seq"] = build_tiny_seq2seq(factory.mktemp("tiny-seq2seq"))
    return _BUILT["seq2seq"]


def causal_spec(
    model_dir: Path,
    task: dict[str, Any],
    files: dict[str, str],
    method: dict[str, Any] | None = None,
    **training: Any,
) -> dict[str, Any]:
    """A camelCase spec for a short CPU run of the tiny causal LM; evaluation only at the end by default.

    qlora specs declare one GPU per pod because the API refuses qlora without GPUs; the run itself
    uses bitsandbytes' CPU backend.
    """
    method = method or {"type": "full"}
    return {
        "model": {"path": str(model_dir)},
        "task": task,
        "dataset": {"files": files},
        "method": method,
        "training": {
            "maxSteps": 16,
            "batchSizePerDevice": 8,
            "learningRate": 1e-2,
            "maxSeqLength": 128,
            "loggingSteps": 1,
            "evalStrategy": "no",
            "saveStrategy": "no",
            "loadBestModelAtEnd": False,
            **training,
        },
        "resources": {"gpusPerNode": 1 if method["type"] == "qlora" else 0},
    }
