"""Generated specs against the real API server (``kubectl apply --dry-run=server``) and the real operator.

The API server's verdict agrees with our validation's, and a refusal names the field path; the operator
reconciles a good job while generated specs the API server admitted sit in the same namespace, and logs
no traceback for them.
"""

from __future__ import annotations

import copy
from functools import partial
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finetune_api.validation import InvalidSpec, parse_spec
from tests.cluster.fixture import Kube
from tests.fuzz.oracle import REFUSED_API, TALLY, Tally, judge_api
from tests.fuzz.profiles import cases
from tests.fuzz.spec_cases import SpecCase, mutated_specs, refused_pairs
from tests.integration.operator_process import OperatorProcess, wait_for
from tests.invalid_specs import BASE

pytestmark = pytest.mark.cluster
# A cluster-ready seed: the API server needs no files, and KWOK GPU nodes take the pods.
SEED: dict[str, Any] = {**copy.deepcopy(BASE), "resources": {"nodes": 1, "gpusPerNode": 1, "cpu": "1", "memory": "1Gi"}}


def manifest(name: str, spec: Any) -> dict[str, Any]:
    return {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": spec}


def our_problems(spec: Any) -> list[str] | None:
    try:
        parse_spec(spec)
    except InvalidSpec as err:
        return err.problems
    return None


def dry_run(kube: Kube, spec: Any) -> tuple[bool, str]:
    out = kube.kubectl(
        "apply", "--dry-run=server", "-n", "default", "-f", "-", input=manifest("fuzz", spec), check=False
    )
    return out.returncode != 0, out.stderr


def status_of(kube: Kube, ns: str, name: str) -> dict[str, Any] | None:
    return kube.kubectl_json("get", "ftj", name, "-n", ns).get("status")


def check_against_api_server(kube: Kube, case: SpecCase) -> None:
    refused, message = dry_run(kube, case.spec)
    problems = judge_api(refused, message, our_problems(case.spec))
    TALLY.setdefault("specs: API server", Tally()).add(
        REFUSED_API if refused else "accepted", problems, str(case.mutations)
    )
    assert not problems, problems


@cases(40)
@given(data=st.data())
def test_the_api_server_and_our_validation_agree_on_generated_specs(crds: Kube, data: Any) -> None:
    check_against_api_server(crds, data.draw(mutated_specs([SEED])))


@cases(8)
@given(data=st.data())
def test_the_api_server_refuses_every_unsupported_task_method_pair(crds: Kube, data: Any) -> None:
    check_against_api_server(crds, data.draw(refused_pairs(SEED)))


def test_the_operator_keeps_reconciling_beside_generated_jobs(
    operator: OperatorProcess,
    kube_namespace: str,
) -> None:
    """Admitted but odd specs (in-range values everywhere) do not stop the operator or the good job beside them."""
    kube, ns = operator.kube, kube_namespace
    log_start = len(operator.log())
    admitted = 0

    @settings(max_examples=12, derandomize=True, database=None, deadline=None)
    @given(mutated_specs([SEED], max_mutations=4, kinds=("in-range",)))
    def apply_one(case: SpecCase) -> None:
        nonlocal admitted
        name = f"odd-{admitted}"
        out = kube.kubectl("apply", "-n", ns, "-f", "-", input=manifest(name, case.spec), check=False)
        admitted += out.returncode == 0

    try:
        apply_one()
        assert admitted >= 1, "no generated spec was admitted; the test would check nothing"
        kube.kubectl("apply", "-n", ns, "-f", "-", input=manifest("good", SEED))
        wait_for("the good job's Job", lambda: kube.kubectl_json("get", "job", "good", "-n", ns))
        for name in [f"odd-{i}" for i in range(admitted)]:
            wait_for(f"{name} reconciled", partial(status_of, kube, ns, name))
        assert operator.healthy()
        new_log = operator.log()[log_start:]
        assert "Traceback" not in new_log, new_log[-3000:]
    finally:
        # Pods left running when the namespace goes can keep their GPUs on the KWOK nodes.
        kube.kubectl("delete", "ftj", "--all", "-n", ns, "--wait=true", "--timeout=90s", check=False)

        def no_pods() -> bool:
            return kube.kubectl_json("get", "pods", "-n", ns, "-l", "finetune.dev/job")["items"] == []

        wait_for("the generated jobs' pods to go", no_pods, timeout=90)
