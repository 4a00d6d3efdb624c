"""This process's place among the trainer processes: global rank, local rank, node.

torchrun (and accelerate launch) describe it in the environment; :meth:`WorldInfo.from_env`
reads it once. The operator's plan (``FTJ_WORLD_SIZE``) is checked against what the launcher
started.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from finetune_api.contract import ENV_WORLD_SIZE
from finetune_trainer.errors import ConfigError


@dataclass(frozen=True)
class WorldInfo:
    """Global rank and world size, and which node (pod) of how many this process runs on."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world_size: int = 1
    node: int = 0
    nodes: int = 1
    planned_world_size: int | None = None  # what the operator planned (FTJ_WORLD_SIZE); None outside a cluster

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorldInfo:
        """From torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK) and FTJ_WORLD_SIZE."""
        env = os.environ if environ is None else environ
        rank = int(env.get("RANK", "0"))
        world = int(env.get("WORLD_SIZE", "1"))
        local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
        planned = env.get(ENV_WORLD_SIZE)
        return cls(
            world_size=world,
            rank=rank,
            local_rank=int(env.get("LOCAL_RANK", "0")),
            local_world_size=local_world,
            node=int(env.get("GROUP_RANK", str(rank // max(local_world, 1)))),
            nodes=int(env.get("GROUP_WORLD_SIZE", str(max(world // max(local_world, 1), 1)))),
            planned_world_size=int(planned) if planned and planned.isdigit() else None,
        )

    @property
    def is_main(self) -> bool:
        """Global rank 0: writes the outputs and manifests, reports status; the others only train."""
        return self.rank == 0

    @property
    def is_node_leader(self) -> bool:
        """Local rank 0: uploads and downloads the files of its node."""
        return self.local_rank == 0

    @property
    def node_ranks(self) -> range:
        """Global ranks of the processes on this node."""
        return range(self.node * self.local_world_size, (self.node + 1) * self.local_world_size)

    def check_planned(self) -> None:
        """Refuse a run whose launcher started another number of processes than the operator planned.

        Batch size, learning-rate schedule and checkpoint sharding all depend on the world size; a pod
        started with other launcher options (a changed image entry point, a hand-edited Job) would
        silently train something else than the spec says.
        """
        if self.planned_world_size is not None and self.planned_world_size != self.world_size:
            raise ConfigError(
                f"resources: the operator planned {self.planned_world_size} trainer processes "
                f"(nodes x gpusPerNode, {ENV_WORLD_SIZE}) but the launcher started {self.world_size}; "
                "the pod's command was changed: let the operator create the Job from the FineTuneJob"
            )


def barrier() -> None:
    """Wait for every trainer process (a no-op in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
