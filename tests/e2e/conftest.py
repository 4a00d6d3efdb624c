"""End-to-end tests: the ``node_agent`` fixture (the cluster fixtures come from the root conftest)."""

from tests.e2e.agent_fixture import node_agent

__all__ = ["node_agent"]
