"""Hub failures reach the Job as the right exit code: a gated model fails at once, an overloaded hub is retried.

A local HTTP server stands in for the hub (``HF_ENDPOINT`` on 127.0.0.1) and answers every request the
same way; the trainer runs as the pod runs it and downloads through the real hub client.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from finetune_api import contract
from tests.trainer import tiny

pytestmark = pytest.mark.slow


class Hub:
    """A ThreadingHTTPServer that answers every request with one status and headers."""

    def __init__(self, status: int, headers: dict[str, str]):
        class Answer(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gated_hub() -> Iterator[Hub]:
    hub = Hub(403, {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access to model someone/model is restricted."})
    yield hub
    hub.close()


@pytest.fixture
def overloaded_hub() -> Iterator[Hub]:
    # Retry-After: 0, as an overloaded hub may send: the hub client's own retries under ours then
    # wait 1 s each instead of its 1-2-4-8-8 s backoff (23 s per file, 66 s for this test).
    hub = Hub(503, {"Retry-After": "0"})
    yield hub
    hub.close()


def run_trainer(hub: Hub, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    files = {
        "train": str(tiny.write_jsonl(tmp_path / "train.jsonl", tiny.sentiment_rows(16))),
        "validation": str(tiny.write_jsonl(tmp_path / "val.jsonl", tiny.sentiment_rows(8, seed=1))),
    }
    spec = tiny.spec_dict(Path("unused"), {"type": "sequence-classification", "labels": ["neg", "pos"]}, files)
    spec["model"] = {"name": "someone/model"}
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(spec))
    argv = [sys.executable, "-m", "finetune_trainer", "run", "--config", str(config), "--output-dir", str(tmp_path)]
    environ = {
        **{k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "FTJ_NAME", "KUBECONFIG")},
        "HF_ENDPOINT": hub.endpoint,
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(tmp_path / "hf-home"),  # nothing cached
        "TOKENIZERS_PARALLELISM": "false",
        **env,
    }
    return subprocess.run(argv, env=environ, capture_output=True, text=True, timeout=300, check=False)


def test_a_gated_model_without_a_token_fails_at_once_naming_the_field(gated_hub: Hub, tmp_path: Path) -> None:
    done = run_trainer(gated_hub, tmp_path)

    assert done.returncode == contract.EXIT_CONFIG, done.stderr[-3000:]
    assert (
        "config error: model.name: cannot load a tokenizer from someone/model: You are trying to access a gated repo"
        in (done.stderr)
    )
    assert "Traceback" not in done.stderr
    assert "retrying in" not in done.stderr


def test_a_hub_answering_503_past_the_retry_budget_exits_retryable(overloaded_hub: Hub, tmp_path: Path) -> None:
    done = run_trainer(overloaded_hub, tmp_path, **{contract.ENV_LOAD_RETRY_SECONDS: "1"})

    assert done.returncode == contract.EXIT_RETRYABLE, done.stderr[-3000:]
    assert (
        "retryable error: model.name: cannot load a tokenizer from someone/model: loading a tokenizer from "
        "someone/model failed 1 time(s) over 1 s; last: the hub answered HTTP 503"
    ) in done.stderr
    assert "Traceback" not in done.stderr
