"""Pytest fixture: one test node agent per session, running our pods as local processes.

Registered by ``tests/e2e/conftest.py``; other folders can import ``node_agent`` from here
the same way. The agent's Node is named ``local-agent-<random>`` (several sessions may
share one cluster), labelled and tainted ``finetune.dev/test-node=local``: a pod reaches it
with ``agent.scheduling()`` (nodeSelector incl. the node's hostname, and the toleration).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.cluster.fixture import Kube
from tests.e2e.node_agent import NodeAgent


@pytest.fixture(scope="session")
def node_agent(kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeAgent]:
    """A started :class:`NodeAgent` (admin kubeconfig of the local cluster); stopped at session end.

    Its folder (logs/, pods/, pvcs/, agent.log) is a pytest temp dir, kept after the run
    like every ``tmp_path``; ``FTJ_NODE_AGENT_DIR`` puts it elsewhere.
    """
    name = f"local-agent-{uuid.uuid4().hex[:6]}"
    base = os.environ.get("FTJ_NODE_AGENT_DIR")
    work_dir = os.path.join(base, name) if base else tmp_path_factory.mktemp(name)
    agent = NodeAgent(kube.kubeconfig, work_dir, name)
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()
