"""Process-group set-up for multi-process training (torchrun): gloo on CPU, nccl on CUDA; DDP wraps the model in
`Engine`. One process when WORLD_SIZE is unset or 1, and then every collective here is a no-op."""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Dist:
    """Join the process group when launched by torchrun (gloo on CPU, nccl on CUDA); single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        # torch._dynamo (imported by transformers' model code) keeps 10 references to a process group that exists
        # when it is first imported, so destroy_process_group cannot free it: its gloo threads outlive the
        # interpreter and abort a rank at exit ("terminate called without an active exception"; 4 of 42
        # two-process KTO runs, 0 of 40 after). Imported before the group exists, it holds none.
        import torch._dynamo as _dynamo  # noqa: F401  (binds only _dynamo: `torch` stays the module global)

        dist.init_process_group(backend=backend)
        # Leave the group before the interpreter tears down, so its threads are joined while Python still runs.
        atexit.register(_leave_process_group)
    rank = dist.get_rank() if dist.is_initialized() else 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    return Dist(rank=rank, world_size=world, local_rank=local_rank, device=device)


def _leave_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def exit_worker(code: int) -> None:
    """End a torchrun worker with `code`: leave the process group, flush, and exit without the interpreter's
    teardown. A single process (no group) returns and exits as usual.

    FSDP2's DTensors keep their device mesh, and through it the process group, in torch.distributed.tensor's
    sharding-propagation caches, which nothing public clears; the gloo group then survives destroy_process_group
    and is destroyed with the interpreter, where its threads abort the rank ("terminate called without an active
    exception"). Everything a run writes is closed before this is called (metrics.jsonl is line-buffered)."""
    if not dist.is_initialized():
        return
    import logging
    import sys

    _leave_process_group()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can reach it
            pass
    os._exit(code)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
