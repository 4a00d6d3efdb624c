"""kubectl finetune predict's task runners on the tiny models: each answer has the task's shape and agrees with the
model computed directly (the sequence-classification case runs against MinIO in tests/storage)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubectl_finetune.kube import CommandError
from kubectl_finetune.predict import quiet_loading, render_predictions, run_task
from tests.trainer import tiny_causal

LABELS = {0: "O", 1: "B-PER", 2: "I-PER"}


def test_token_classification_gives_entities_with_their_spans(tiny_bert: Path) -> None:
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForTokenClassification.from_pretrained(
        str(tiny_bert), num_labels=3, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}
    ).eval()
    with torch.no_grad():  # a head that calls every token a person
        model.classifier.bias.copy_(torch.tensor([-9.0, 9.0, 0.0]))
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert))
    texts = ["alice met bob in paris"]
    [prediction] = run_task("token-classification", model, tokenizer, texts, context=None, multi_label=False)
    entities = prediction["entities"]
    assert entities and all(e["entity"] == "PER" for e in entities)
    assert all(texts[0][e["start"] : e["end"]].lower() == e["word"].replace(" ", "") for e in entities)
    assert "PER: " in render_predictions([prediction])


def test_question_answering_gives_a_span_of_the_passage(tiny_bert: Path) -> None:
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    model = AutoModelForQuestionAnswering.from_pretrained(str(tiny_bert)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert))
    passage = "the film was shot in paris during the winter of last year"
    [answer] = run_task(
        "question-answering", model, tokenizer, ["where was it shot?"], context=passage, multi_label=False
    )
    assert answer["answer"] and answer["answer"] == passage[answer["start"] : answer["end"]]
    assert "characters" in render_predictions([answer])
    with pytest.raises(CommandError, match="--passage"):
        run_task("question-answering", model, tokenizer, ["where?"], context=None, multi_label=False)


def test_generation_continues_the_prompt_as_greedy_decoding_does(tmp_path_factory: pytest.TempPathFactory) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_causal.cached_tiny_causal(tmp_path_factory)
    model = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    prompt = "the weather today is"
    [generated] = run_task("causal-lm", model, tokenizer, [prompt], context=None, multi_label=False)
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=64, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(out[0], skip_special_tokens=True)
    assert prompt + generated["generated"] == expected or generated["generated"] == expected


def test_loading_for_predict_hides_transformers_load_report_and_restores_its_verbosity(
    tiny_bert: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import warnings

    from transformers import AutoModelForTokenClassification
    from transformers.utils import logging as hf_logging

    bnb_ops = logging.getLogger("bitsandbytes.backends.cpu.ops")  # the logger of its CPU-kernel notice
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    root = hf_logging.get_logger()  # the "transformers" logger (it does not propagate)
    root.addHandler(handler)
    before = hf_logging.get_verbosity()
    try:
        hf_logging.enable_progress_bar()
        capsys.readouterr()
        AutoModelForTokenClassification.from_pretrained(str(tiny_bert), num_labels=3)
        assert any("LOAD REPORT" in r.getMessage() for r in records)  # a fresh head: the report is logged
        assert "Loading weights" in capsys.readouterr().err  # and the progress bar is drawn
        records.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with quiet_loading():
                AutoModelForTokenClassification.from_pretrained(str(tiny_bert), num_labels=3)
                warnings.warn("a library's deprecation notice", FutureWarning, stacklevel=1)
                bnb_ops.warning("Failed to load CPU gemm_4bit_forward from kernels-community")
            warnings.warn("one after the block", FutureWarning, stacklevel=1)
            bnb_ops.warning("a bitsandbytes warning after the block")
        assert not [r for r in records if r.levelno < logging.ERROR]
        assert "Loading weights" not in capsys.readouterr().err
        bnb_said = [r.getMessage() for r in caplog.records if r.name.startswith("bitsandbytes")]
        assert bnb_said == ["a bitsandbytes warning after the block"]  # the notice in the block is not emitted
        assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == ["one after the block"]
        assert hf_logging.get_verbosity() == before
        assert hf_logging.is_progress_bar_enabled()  # restored
    finally:
        root.removeHandler(handler)
