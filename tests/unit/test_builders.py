"""The objects rendered for a FineTuneJob: golden files for a matrix of specs, plus the rules
that matter most pinned by explicit assertions.

Refresh the golden files after an intended change with FTJ_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_api.validation import parse_spec
from finetune_operator.builders import Parent, build_children, build_job, launcher_args
from finetune_operator.settings import OperatorSettings
from tests.invalid_specs import BASE

GOLDEN = Path(__file__).parent / "golden"
PARENT = Parent(name="bert-imdb", namespace="team-a", uid="0b7c3f4e-1111-2222-3333-444455556666")
SETTINGS = OperatorSettings(trainer_image="registry.example/trainer:1.0")


def _spec(**sections: Any) -> dict[str, Any]:
    spec = copy.deepcopy(BASE)
    spec.update(sections)
    return spec


CASES: dict[str, dict[str, Any]] = {
    "1node-1gpu": _spec(),
    "1node-8gpu-deepspeed": _spec(
        resources={"gpusPerNode": 8}, distributed={"strategy": "deepspeed", "deepspeed": {"stage": 3}}
    ),
    "2node-8gpu-kueue-secrets": _spec(
        model={"name": "meta-llama/Llama-3.2-1B", "tokenSecretRef": {"name": "hf-token"}},
        resources={
            "nodes": 2,
            "gpusPerNode": 8,
            "nodeSelector": {"nvidia.com/gpu.product": "H100"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "priorityClassName": "training",
            "podAnnotations": {"sidecar.istio.io/inject": "false"},
            "podLabels": {"team": "a"},
        },
        output={
            "s3": {
                "bucket": "models",
                "endpoint": "http://minio:9000",
                "pathStyle": True,
                "credentialsSecretRef": {"name": "s3-creds"},
            }
        },
        runPolicy={
            "queueName": "team-a",
            "backoffLimit": 5,
            "activeDeadlineSeconds": 86400,
            "ttlSecondsAfterFinished": 3600,
            "terminationGracePeriodSeconds": 900,
        },
    ),
    "2node-1gpu-qlora-pvc-suspended": _spec(
        method={"type": "qlora", "quantization": {"computeDtype": "bfloat16"}},
        resources={"nodes": 2, "gpusPerNode": 1, "volumeClaimName": "cache"},
        runPolicy={"suspend": True},
    ),
    "cpu-only": _spec(resources={"gpusPerNode": 0, "cpu": "2", "memory": "4Gi"}),
}


def _render(case: str) -> list[dict[str, Any]]:
    return build_children(PARENT, parse_spec(CASES[case]), SETTINGS)


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_objects_match_golden(case: str) -> None:
    text = yaml.safe_dump_all(_render(case), sort_keys=True)
    path = GOLDEN / f"{case}.yaml"
    if os.environ.get("FTJ_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with FTJ_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{case} differs from {path}; if intended, rerun with FTJ_UPDATE_GOLDEN=1"


def test_every_child_is_owned_by_the_finetunejob() -> None:
    for obj in _render("2node-8gpu-kueue-secrets"):
        (owner,) = obj["metadata"]["ownerReferences"]
        assert owner["uid"] == PARENT.uid and owner["controller"] is True
        assert obj["metadata"]["namespace"] == "team-a"


def test_job_has_one_pod_per_node_each_with_its_gpus() -> None:
    job = build_job(PARENT, parse_spec(CASES["2node-8gpu-kueue-secrets"]), SETTINGS)
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert "--nnodes=2" in container["args"] and "--nproc-per-node=8" in container["args"]
    assert "--master-addr=bert-imdb-0.bert-imdb" in container["args"]
    assert "--node-rank=$(PET_NODE_RANK)" in container["args"]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"


def test_only_a_multi_node_job_gets_the_rendezvous_service() -> None:
    single = _render("1node-1gpu")
    assert "Service" not in [o["kind"] for o in single]
    assert "subdomain" not in single[-1]["spec"]["template"]["spec"]
    multi = _render("2node-8gpu-kueue-secrets")
    (service,) = [o for o in multi if o["kind"] == "Service"]
    assert multi[-1]["spec"]["template"]["spec"]["subdomain"] == service["metadata"]["name"]


def test_job_records_the_generation_and_template_it_was_rendered_from() -> None:
    from dataclasses import replace

    spec = parse_spec(BASE)
    job = build_job(replace(PARENT, generation=5), spec, SETTINGS)
    annotations = job["metadata"]["annotations"]
    assert annotations["finetune.dev/generation"] == "5"
    same = build_job(PARENT, spec, SETTINGS)["metadata"]["annotations"]["finetune.dev/template-hash"]
    bigger = parse_spec({**BASE, "resources": {"memory": "96Gi"}})
    other = build_job(PARENT, bigger, SETTINGS)["metadata"]["annotations"]["finetune.dev/template-hash"]
    assert annotations["finetune.dev/template-hash"] == same != other


def test_node_rank_comes_from_the_completion_index() -> None:
    job = build_job(PARENT, parse_spec(BASE), SETTINGS)
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    path = env["PET_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert path == "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def test_secrets_only_by_reference() -> None:
    objs = _render("2node-8gpu-kueue-secrets")
    job = objs[-1]
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    for name in ("HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert "value" not in env[name] and "secretKeyRef" in env[name]["valueFrom"]


def test_config_map_carries_the_resolved_spec_the_trainer_reads() -> None:
    from finetune_api.validation import spec_from_document

    spec = parse_spec(CASES["2node-8gpu-kueue-secrets"])
    config_map = build_children(PARENT, spec, SETTINGS)[0]
    assert spec_from_document(yaml.safe_load(config_map["data"]["job.yaml"])) == spec


def test_pod_failure_policy_ignores_disruptions_fails_fast_on_permanent_and_counts_retryable_codes() -> None:
    from finetune_api.contract import EXIT_CODES

    job = build_job(PARENT, parse_spec(BASE), SETTINGS)
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    assert rules[1]["action"] == "FailJob" and rules[1]["onExitCodes"]["values"] == [3, 4]
    assert rules[2]["action"] == "Count" and rules[2]["onExitCodes"]["values"] == [75]
    # Every failing code the trainer declares is either failed at once or counted, as it declares.
    for code in EXIT_CODES:
        if code.code:
            (rule,) = [r for r in rules[1:] if code.code in r["onExitCodes"]["values"]] or [None]
            assert rule is None or (rule["action"] == "FailJob") == code.permanent, code
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_pods_run_as_non_root_without_privileges() -> None:
    pod = build_job(PARENT, parse_spec(BASE), SETTINGS)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = pod["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    # A read-only root filesystem: what the trainer writes goes to volumes (tests/e2e runs it so).
    assert sc["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert {k: v for k, v in volumes[mounts["/tmp"]].items() if k != "name"} == {"emptyDir": {}}
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["HOME"] == "/tmp" and env["HF_HOME"].startswith("/workspace/")


def test_trainer_pods_get_the_grace_period_for_their_sigterm_checkpoint() -> None:
    default = build_job(PARENT, parse_spec(BASE), SETTINGS)["spec"]["template"]["spec"]
    assert default["terminationGracePeriodSeconds"] == 300  # not Kubernetes' 30 s: a save and an upload
    job = build_job(PARENT, parse_spec(CASES["2node-8gpu-kueue-secrets"]), SETTINGS)
    assert job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 900


def test_user_strings_never_reach_a_shell() -> None:
    spec = _spec(model={"name": "x; rm -rf / #"})
    job = build_job(PARENT, parse_spec(spec), SETTINGS)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "finetune_trainer.launch"]
    assert all("rm -rf" not in a for a in container["args"])


def test_deepspeed_config_travels_in_the_config_map() -> None:
    objs = _render("1node-8gpu-deepspeed")
    ds = yaml.safe_load(objs[0]["data"]["deepspeed.json"])
    assert ds["zero_optimization"]["stage"] == 3
    args = launcher_args(PARENT, parse_spec(CASES["1node-8gpu-deepspeed"]), SETTINGS)
    assert "--standalone" in args and "--nproc-per-node=8" in args


def test_trainer_role_reaches_only_its_own_job() -> None:
    role = next(o for o in _render("1node-1gpu") if o["kind"] == "Role")
    for rule in role["rules"]:
        assert rule["resourceNames"] == ["bert-imdb"]
        assert set(rule["verbs"]) <= {"get", "patch"}
