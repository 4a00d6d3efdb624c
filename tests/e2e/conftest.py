"""End-to-end fixtures: the real node with the project's images (the cluster fixtures come from the
root conftest)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.e2e.real_node import RealNode, hold_node_lock, start_node

__all__ = ["real_node"]


@pytest.fixture(scope="session")
def real_node(cluster_env: dict[str, str]) -> Iterator[RealNode]:
    """The machine's real node joined to this session's cluster, both images in its containerd.

    The session holds the machine's real-node lock; ``tests/cluster/down.sh`` stops the node with
    the cluster.
    """
    with hold_node_lock():
        yield start_node({**os.environ, **cluster_env}, ["trainer", "operator"])
