"""The job's process group as the checkpointer uses it.

In a multi-process job (``torchrun``, or SageMaker's multi-instance jobs) every rank must save
the same step, stop at the same step and resume from the same step, and a step counts only
once every rank holds it durably. The ranks agree through small collectives on
``torch.distributed``'s default group, which the training script initialises
(``init_process_group``) as it does for its own gradients. The agreement runs on the CPU over
gloo: the default group itself when it is gloo, else a gloo group of the same ranks created on
first use, so that it never waits for a GPU's queue to drain (an NCCL all-reduce read back on
the host every step would).
"""

from __future__ import annotations

from typing import Any, List

import torch

from ._native import CheckpointError


class Group:
    """The default process group, checked against the ``RANK``/``WORLD_SIZE`` the checkpointer
    was created under."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank = rank
        self.world_size = world_size
        self._cpu_group: Any = None

    def _dist(self) -> Any:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise CheckpointError(
                f"WORLD_SIZE is {self.world_size} but torch.distributed is not initialised: "
                "call torch.distributed.init_process_group() before restore(), due(), "
                "should_stop(), save() or wait()"
            )
        if (dist.get_rank(), dist.get_world_size()) != (self.rank, self.world_size):
            raise CheckpointError(
                f"the process group is rank {dist.get_rank()} of {dist.get_world_size()}, "
                f"but RANK/WORLD_SIZE said {self.rank} of {self.world_size}"
            )
        return dist

    def _cpu(self, dist: Any) -> Any:
        """A gloo group of every rank (None: the default group is gloo already)."""
        if self._cpu_group is None and dist.get_backend() != "gloo":
            self._cpu_group = dist.new_group(backend="gloo")  # collective: every rank is here
        return self._cpu_group

    def max(self, values: List[int]) -> List[int]:
        """The element-wise maximum of ``values`` over all ranks (negate for a minimum)."""
        dist = self._dist()
        t = torch.tensor(values, dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self._cpu(dist))
        return [int(v) for v in t.tolist()]

    def gather(self, value: Any) -> List[Any]:
        """Every rank's ``value`` (picklable), by rank."""
        dist = self._dist()
        out: List[Any] = [None] * self.world_size
        dist.all_gather_object(out, value, group=self._cpu(dist))
        return out
