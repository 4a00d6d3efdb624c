"""kubectl finetune against the local API server and MinIO, on the shared trained run (tests/storage/full_run.py):
list, status, plot, compare, predict (with and without the right to read the job's S3 Secret), suspend, resume,
delete, each with -o json where it has one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubectl_finetune.main import main
from tests.cluster.fixture import Kube, MinIO
from tests.storage.full_run import FullRun

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
SENTENCES = ["the movie was really good", "the meal was so awful"]


def plugin(capsys: pytest.CaptureFixture[str], kube: Kube, *args: str) -> tuple[int, str, str]:
    code = main(["--kubeconfig", str(kube.kubeconfig), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def trained(full_run: FullRun, kube: Kube) -> FullRun:
    """The shared run's job, marked Succeeded as the operator would (no operator watches its namespace)."""
    patch = {"status": {"phase": "Succeeded", "topology": "1x0"}}
    kube.kubectl(
        "patch", "ftj", full_run.name, "-n", full_run.namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps(patch),
    )  # fmt: skip
    return full_run


def second_job(kube: Kube, run: FullRun, name: str, learning_rate: float) -> None:
    """A second job of the same spec but for the learning rate, with a final status of its own."""
    job = kube.kubectl_json("get", "ftj", run.name, "-n", run.namespace)
    job["spec"]["training"]["learningRate"] = learning_rate
    job["spec"]["runPolicy"] = {**job["spec"].get("runPolicy", {}), "suspend": False}
    manifest = {"apiVersion": job["apiVersion"], "kind": job["kind"], "metadata": {"name": name}, "spec": job["spec"]}
    kube.kubectl("apply", "-n", run.namespace, "-f", "-", input=manifest)
    status = {"phase": "Failed", "progress": {"step": 5, "loss": 0.9}, "metrics": {"eval_accuracy": 0.5}}
    kube.kubectl(
        "patch", "ftj", name, "-n", run.namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}),
    )  # fmt: skip


def test_list_and_status(capsys: pytest.CaptureFixture[str], kube: Kube, trained: FullRun) -> None:
    code, out, _ = plugin(capsys, kube, "list", "-n", trained.namespace)
    assert code == 0
    header, row = out.splitlines()
    assert header.split()[:3] == ["NAME", "PHASE", "PROGRESS"]
    assert row.split()[:5] == ["bert-s3", "Succeeded", "[####################]", "100%", "12/12"]
    code, out, _ = plugin(capsys, kube, "list", "-A", "-o", "json")
    rows = [r for r in json.loads(out)["items"] if r["namespace"] == trained.namespace]
    assert code == 0 and rows[0]["step"] == 12 and rows[0]["loss"] == trained.status["progress"]["loss"]

    code, out, _ = plugin(capsys, kube, "status", "bert-s3", "-n", trained.namespace, "-o", "json")
    summary = json.loads(out)
    assert code == 0 and summary["artifacts"] == trained.status["artifacts"] and summary["topology"] == "1x0"
    assert summary["parameters"] == trained.status["parameters"] and summary["task"] == "sequence-classification"
    code, out, _ = plugin(capsys, kube, "status", "bert-s3", "-n", trained.namespace)
    assert "mergedModel: s3://" in out and "Succeeded" in out
    code, _, err = plugin(capsys, kube, "status", "nope", "-n", trained.namespace)
    assert code == 1 and err.strip() == f'error: finetunejob "nope" in namespace "{trained.namespace}": not found'


def test_plot_in_the_terminal_as_json_and_as_an_image(
    capsys: pytest.CaptureFixture[str], kube: Kube, trained: FullRun, tmp_path: Path
) -> None:
    code, out, _ = plugin(capsys, kube, "plot", "bert-s3", "-n", trained.namespace, "-o", "json")
    curves = json.loads(out)["bert-s3"]
    history = trained.status["history"]
    assert code == 0 and curves["train loss"] == [[p["step"], p["loss"]] for p in history["train"]]
    assert curves["eval accuracy"] == [[p["step"], p["metrics"]["accuracy"]] for p in history["eval"]]
    code, out, _ = plugin(capsys, kube, "plot", "bert-s3", "-n", trained.namespace, "--width", "40")
    assert code == 0 and out.startswith("train loss\n") and "eval loss" in out and "* bert-s3" in out
    image = tmp_path / "curves.png"
    code, _, err = plugin(capsys, kube, "plot", "bert-s3", "-n", trained.namespace, "--output", str(image))
    assert err.strip() == f"saved {image}"
    assert code == 0 and image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.stat().st_size > 10_000


def test_compare_suspend_resume_delete(capsys: pytest.CaptureFixture[str], kube: Kube, trained: FullRun) -> None:
    second_job(kube, trained, "bert-s3-fast", 5e-2)
    code, out, _ = plugin(capsys, kube, "compare", "bert-s3", "bert-s3-fast", "-n", trained.namespace, "-o", "json")
    result = json.loads(out)
    assert code == 0 and result["parameters"]["training.learningRate"] == {"bert-s3": 1e-2, "bert-s3-fast": 5e-2}
    assert "training.maxSteps" not in result["parameters"]  # the same in both
    assert result["metrics"]["eval_accuracy"] == {
        "bert-s3": trained.status["metrics"]["eval_accuracy"],
        "bert-s3-fast": 0.5,
    }

    def suspended() -> Any:
        return kube.kubectl_json("get", "ftj", "bert-s3-fast", "-n", trained.namespace)["spec"]["runPolicy"]["suspend"]

    assert plugin(capsys, kube, "suspend", "bert-s3-fast", "-n", trained.namespace)[0] == 0 and suspended() is True
    assert plugin(capsys, kube, "resume", "bert-s3-fast", "-n", trained.namespace)[0] == 0 and suspended() is False
    assert plugin(capsys, kube, "delete", "bert-s3-fast", "-n", trained.namespace)[0] == 0
    assert kube.kubectl("get", "ftj", "bert-s3-fast", "-n", trained.namespace, check=False).returncode != 0


def set_merged_model(kube: Kube, run: FullRun, uri: str | None) -> None:
    patch = {"status": {"artifacts": {"mergedModel": uri}}}
    kube.kubectl(
        "patch", "ftj", run.name, "-n", run.namespace, "--subresource=status", "--type=merge", "-p", json.dumps(patch)
    )


@pytest.mark.parametrize("artifact", ["merged model", "adapter on its base"])
def test_predict_with_the_jobs_secret_matches_the_trained_model(
    capsys: pytest.CaptureFixture[str],
    kube: Kube,
    trained: FullRun,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    artifact: str,
) -> None:
    import torch

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key, raising=False)  # only the job's Secret can open the bucket
    args = ["predict", "bert-s3", *SENTENCES, "-n", trained.namespace, "--cache-dir", str(tmp_path), "-o", "json"]
    if artifact == "adapter on its base":
        set_merged_model(kube, trained, None)  # a job without saveMergedModel: final/ holds the adapter
    try:
        code, out, err = plugin(capsys, kube, *args)
    finally:
        set_merged_model(kube, trained, trained.status["artifacts"]["mergedModel"])
    assert code == 0, err
    predictions = json.loads(out)
    # An independent computation: the trained model in this process, on the same sentences.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(trained.result.output_dir))
    with torch.no_grad():
        batch = tokenizer(SENTENCES, return_tensors="pt", padding=True)
        probs = torch.softmax(trained.result.model.eval()(**batch).logits, dim=-1)
    for p, row in zip(predictions, probs, strict=True):
        assert set(p["scores"]) == {"neg", "pos"}
        assert p["scores"]["neg"] == pytest.approx(float(row[0]), abs=1e-4)
        assert p["scores"]["pos"] == pytest.approx(float(row[1]), abs=1e-4)
        assert p["label"] == ("pos" if row[1] > row[0] else "neg")


def test_predict_without_the_right_to_read_the_secret_says_so(
    capsys: pytest.CaptureFixture[str],
    kube: Kube,
    minio: MinIO,
    trained: FullRun,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ns = trained.namespace
    kube.kubectl("create", "serviceaccount", "viewer", "-n", ns)
    kube.kubectl("create", "role", "ftj-viewer", "-n", ns, "--verb=get,list", "--resource=finetunejobs.finetune.dev")
    kube.kubectl("create", "rolebinding", "ftj-viewer", "-n", ns, "--role=ftj-viewer", f"--serviceaccount={ns}:viewer")
    token = kube.kubectl("create", "token", "viewer", "-n", ns, "--duration=10m").stdout.strip()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": kube.server, "certificate-authority": str(kube.ca_file)}}],
        "users": [{"name": "viewer", "user": {"token": token}}],
        "contexts": [{"name": "viewer", "context": {"cluster": "local", "user": "viewer", "namespace": ns}}],
        "current-context": "viewer",
    }
    kubeconfig = tmp_path / "viewer.kubeconfig"
    kubeconfig.write_text(json.dumps(config))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", minio.access_key)  # the user's own credentials
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", minio.secret_key)
    code = main(["--kubeconfig", str(kubeconfig), "predict", "bert-s3", SENTENCES[0], "--cache-dir", str(tmp_path)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert f'your kubeconfig may not read the job\'s S3 credentials (Secret "s3-creds" in namespace "{ns}")' in out.err
    assert out.out.startswith(f"> {SENTENCES[0]}\n  ") and "neg" in out.out and "pos" in out.out
