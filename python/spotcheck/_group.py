"""The job's process group as the checkpointer uses it.

In a multi-process job (``torchrun``, or SageMaker's multi-instance jobs) every rank must save
the same step, stop at the same step and resume from the same step, and a step counts only
once every rank holds it durably. The ranks agree through small collectives on
``torch.distributed``'s default group, which the training script initialises
(``init_process_group``) as it does for its own gradients: on the CPU for gloo, on the current
CUDA device for NCCL.
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

    def max(self, values: List[int]) -> List[int]:
        """The element-wise maximum of ``values`` over all ranks (negate for a minimum)."""
        dist = self._dist()
        device = torch.device("cpu")
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        t = torch.tensor(values, dtype=torch.int64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [int(v) for v in t.tolist()]

    def gather(self, value: Any) -> List[Any]:
        """Every rank's ``value`` (picklable), by rank."""
        dist = self._dist()
        out: List[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out
