"""The operator/trainer contract: every shared name is spelled once, and what is set is read."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from finetune_api import contract
from finetune_api.spec import FineTuneJobSpec
from finetune_operator.builders import Parent, build_config_map, build_job
from finetune_operator.settings import OperatorSettings
from finetune_trainer.errors import ConfigError, DataError, TrainerError
from finetune_trainer.launch import exit_code_for
from finetune_trainer.world import WorldInfo

ROOT = Path(__file__).resolve().parents[2]
SOURCES = {
    "api": ROOT / "api" / "finetune_api",
    "operator": ROOT / "operator" / "finetune_operator",
    "trainer": ROOT / "trainer_image" / "finetune_trainer",
}
PARENT = Parent(name="j", namespace="ns", uid="u-1")
SPEC = FineTuneJobSpec.model_validate(
    {
        "model": {"name": "m", "tokenSecretRef": {"name": "hf", "key": "token"}},
        "task": {"type": "sequence-classification", "labels": ["a", "b"]},
        "dataset": {"name": "d"},
        "method": {"type": "lora"},
        "resources": {"nodes": 2, "gpusPerNode": 0},
        "output": {
            "s3": {"bucket": "models", "endpoint": "http://127.0.0.1:9000", "credentialsSecretRef": {"name": "s"}}
        },
    }
)
# Read by the Python runtime itself, not by our code.
RUNTIME_ENV = {"PYTHONUNBUFFERED", "HOME"}  # for Python and the libraries (HOME: a writable /tmp)
# Read by a library on the trainer's behalf: torchrun (its --node-rank argument names the variable),
# huggingface_hub (cache and token) and boto3 (credentials).
LIBRARY_READERS = {
    contract.ENV_NODE_RANK,
    contract.ENV_HF_HOME,
    contract.ENV_HF_TOKEN,
    contract.ENV_S3_ACCESS_KEY_ID,
    contract.ENV_S3_SECRET_ACCESS_KEY,
}


def _env_constants() -> dict[str, str]:
    return {name: value for name, value in vars(contract).items() if name.startswith("ENV_")}


def _python_files(*parts: str) -> list[Path]:
    return [p for part in parts for p in sorted(SOURCES[part].rglob("*.py")) if p.name != "contract.py"]


def _pod_env() -> list[str]:
    job = build_job(PARENT, SPEC, OperatorSettings())
    return [e["name"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]]


def test_the_pod_env_uses_only_names_of_the_contract() -> None:
    names = set(_pod_env())
    assert names - RUNTIME_ENV <= set(_env_constants().values())
    # The fixture exercises every optional variable, so the check covers them all.
    assert {contract.ENV_HF_TOKEN, contract.ENV_S3_ENDPOINT, contract.ENV_S3_ACCESS_KEY_ID} <= names


def test_every_variable_the_operator_sets_has_a_reader_in_the_trainer() -> None:
    trainer_source = "\n".join(p.read_text() for p in _python_files("trainer"))
    by_value = {v: k for k, v in _env_constants().items()}
    unread = [
        name
        for name in set(_pod_env()) - RUNTIME_ENV - LIBRARY_READERS
        if not re.search(rf"\b{by_value[name]}\b", trainer_source)
    ]
    assert unread == []


def test_no_module_spells_a_contract_value_itself() -> None:
    values = {
        v
        for k, v in vars(contract).items()
        if k.isupper()
        and isinstance(v, str)
        and not k.endswith("_MODULE")  # Python package names: a logger or prog name may say them
        and (k.startswith("ENV_") or "_" in v or "." in v or "/" in v)
    }
    offenders = []
    for path in _python_files("api", "operator", "trainer"):
        text = path.read_text()
        offenders += [f"{path.relative_to(ROOT)}: {v!r}" for v in values if f'"{v}"' in text]
    assert offenders == []


def test_the_config_map_and_the_program_meet_at_the_same_file() -> None:
    config_map = build_config_map(PARENT, SPEC, OperatorSettings())
    args = build_job(PARENT, SPEC, OperatorSettings())["spec"]["template"]["spec"]["containers"][0]["args"]
    assert contract.JOB_CONFIG_FILE in config_map["data"]
    assert f"--config={contract.CONFIG_DIR}/{contract.JOB_CONFIG_FILE}" in args


def test_exit_codes_are_permanent_or_retryable_never_both() -> None:
    assert set(contract.PERMANENT_EXIT_CODES) == {contract.EXIT_CONFIG, contract.EXIT_DATA}
    assert contract.RETRYABLE_EXIT_CODES == (75,)
    assert not set(contract.PERMANENT_EXIT_CODES) & set(contract.RETRYABLE_EXIT_CODES)
    assert len({c.code for c in contract.EXIT_CODES}) == len(contract.EXIT_CODES)
    assert contract.exit_code(75) is not None and not contract.exit_code(75).permanent  # type: ignore[union-attr]
    assert contract.exit_code(2) is None


def test_the_podfailurepolicy_fails_the_job_on_exactly_the_permanent_codes() -> None:
    rules = build_job(PARENT, SPEC, OperatorSettings())["spec"]["podFailurePolicy"]["rules"]
    fail_job = [r for r in rules if r["action"] == "FailJob"]
    assert [sorted(r["onExitCodes"]["values"]) for r in fail_job] == [sorted(contract.PERMANENT_EXIT_CODES)]


def test_trainer_errors_exit_with_the_contract_codes() -> None:
    assert ConfigError("x").exit_code == contract.EXIT_CONFIG
    assert DataError("x").exit_code == contract.EXIT_DATA
    assert TrainerError("x").exit_code == contract.EXIT_FAILED


def test_the_launcher_keeps_a_retryable_code_and_prefers_a_permanent_one() -> None:
    assert exit_code_for([0, contract.EXIT_RETRYABLE]) == contract.EXIT_RETRYABLE
    assert exit_code_for([contract.EXIT_RETRYABLE, contract.EXIT_DATA]) == contract.EXIT_DATA


def test_the_trainer_refuses_another_world_size_than_the_operator_planned() -> None:
    env = {contract.ENV_WORLD_SIZE: "4", "WORLD_SIZE": "2", "RANK": "1"}
    with pytest.raises(ConfigError, match=r"planned 4 trainer processes.*started 2"):
        WorldInfo.from_env(env).check_planned()
    WorldInfo.from_env({**env, "WORLD_SIZE": "4"}).check_planned()
    WorldInfo.from_env({"WORLD_SIZE": "2"}).check_planned()  # outside a cluster nothing is planned


def test_the_api_package_imports_without_the_trainer_libraries() -> None:
    """The operator image has no torch: every finetune_api module must import without it."""
    import subprocess
    import sys

    modules = sorted(f"finetune_api.{p.stem}" for p in SOURCES["api"].glob("*.py") if p.stem != "__init__")
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "heavy = sorted({'torch', 'accelerate', 'transformers', 'peft', 'trl'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_both_sides_load_the_kube_config_kubeconfig_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside a pod, finetune_api.kube_client reads the file KUBECONFIG names (operator and trainer alike)."""
    from kubernetes import client

    from finetune_api.kube_client import load_kube_config

    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:6443'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    cfg = client.Configuration()
    load_kube_config(cfg)
    assert cfg.host == "https://127.0.0.1:6443"
