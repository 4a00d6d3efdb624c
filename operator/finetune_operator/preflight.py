"""Checks only the operator can make: what the spec refers to must exist in the cluster.

The CRD schema and the typed models judge the spec alone; these look at the namespace.
A failed check stalls the job with the field path and the fix instead of leaving pods
stuck in Pending or ContainerCreating.
"""

from __future__ import annotations

from collections.abc import Callable

from finetune_api.spec import FineTuneJobSpec


def preflight_problems(spec: FineTuneJobSpec, namespace: str, pvc_exists: Callable[[str], bool]) -> list[str]:
    """Problems with objects the spec references, as 'path: what and how to fix' lines."""
    problems = []
    claim = spec.resources.volume_claim_name
    if claim and not pvc_exists(claim):
        problems.append(
            f"spec.resources.volumeClaimName: PersistentVolumeClaim {claim!r} not found in namespace "
            f"{namespace!r}; create it or remove the field to use an emptyDir"
        )
    return problems
