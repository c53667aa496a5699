"""Splitting one extraction over many processes: ``--part I/N`` or torchrun's ranks.

Every image has exactly one owner: the part chosen by its content key. A file the stat index
knows is planned by its key's owner alone; a file not hashed yet is read and hashed by every
part (cheap next to decoding and the forward pass) and decoded and embedded only by its key's
owner, which records the key, so later runs skip the reading. Identical files under different
paths are therefore embedded once, and a rerun with any number of parts plans against the same
published shards: nothing embedded is embedded again.

Under torchrun, :class:`Coordinator` joins the process group (gloo: only a few integers
travel) so that rank 0 can print one summary for the whole job.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

from headstart.errors import HeadstartError

__all__ = ["Coordinator", "Partition", "parse_part"]


@dataclass(frozen=True)
class Partition:
    """Part ``index`` (0-based) of ``count``."""

    index: int
    count: int

    def owns_key(self, key: str) -> bool:
        return int(key[:12], 16) % self.count == self.index

    def owns_path(self, path: str) -> bool:
        digest = hashlib.sha1(path.encode("utf-8", "surrogateescape")).hexdigest()
        return self.owns_key(digest)

    @classmethod
    def from_environment(cls) -> Partition | None:
        """The rank's part when started by torchrun (WORLD_SIZE > 1), else None."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return None
        return cls(int(os.environ["RANK"]), world)


def parse_part(text: str) -> Partition:
    """'I/N' with 1 <= I <= N (as Slurm array indices are usually written) -> Partition."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise HeadstartError(f"--part takes I/N with 1 <= I <= N (e.g. 3/8), not {text!r}")
    return Partition(int(match.group(1)) - 1, int(match.group(2)))


class Coordinator:
    """torchrun's process group, for summing counts and for rank 0 to speak for the job."""

    def __init__(self, partition: Partition) -> None:
        import torch.distributed as dist

        self.partition = partition
        self._dist = dist
        if not dist.is_initialized():
            dist.init_process_group("gloo")

    @property
    def is_leader(self) -> bool:
        return self.partition.index == 0

    def total(self, counts: list[int]) -> list[int]:
        """Element-wise sum of ``counts`` over all ranks (every rank gets the result)."""
        import torch

        tensor = torch.tensor(counts, dtype=torch.int64)
        self._dist.all_reduce(tensor)
        return tensor.tolist()

    def wait_for_all(self) -> None:
        """Block until every rank gets here."""
        self._dist.barrier()

    def close(self) -> None:
        if self._dist.is_initialized():
            self._dist.destroy_process_group()


def local_device(device: str) -> str:
    """Under torchrun, ``auto``/``cuda`` mean this rank's own GPU (LOCAL_RANK)."""
    import torch

    local = os.environ.get("LOCAL_RANK")
    if local is not None and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{int(local) % torch.cuda.device_count()}"
    return device
