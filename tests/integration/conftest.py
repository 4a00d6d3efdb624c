"""Fixtures of the tests against the local control plane: CRDs installed, an operator running."""

from tests.integration.operator_process import crds, operator

__all__ = ["crds", "operator"]
