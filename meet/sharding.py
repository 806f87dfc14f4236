"""Gallery encoding sharded over processes: ``torchrun ... -m meet.build_index``.

Encoding is what grows with a gallery (a CNN or a transformer per image and per caption);
everything after it is cheap by comparison (codes are bit-packing, the quantizer fit reads
a sample). So under ``torchrun`` each rank encodes one contiguous shard of the images and
one of the captions on its own device (``cuda:LOCAL_RANK`` when there are GPUs, else the
CPU), rank 0 gathers the shards in rank order, which is the split's own order, and builds
and saves one index exactly as a single process would: the same items in the same order,
so the same codes, quantizer and results (tested with gloo on 2 CPU processes).

The process group is always gloo: the only collective is one gather of numpy arrays, and
gloo runs on every machine (NCCL would need the arrays on the GPU first). Across several
machines the gather travels over the network to rank 0, which must hold the whole
gallery's encodings (about ``n x (4 dim + n_bits + ...)`` bytes: 1.2 GB for 1M items at
dim 256); past that, serve the shards apart (README, "Past one machine").
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from meet.errors import ConfigError
from meet.inference import Encoded, MEETModel


@dataclass(frozen=True)
class Ranks:
    """This process's place among ``world`` processes (``world`` 1: not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> str:
        """The device this rank encodes on: its own GPU under torchrun when there are GPUs
        (and ``requested`` allows one), else what was requested."""
        if self.world > 1 and requested in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        return requested


def init_ranks(timeout_minutes: float = 60.0) -> Ranks:
    """The torchrun environment's ranks; joins a gloo process group when there are several.

    ``timeout_minutes`` bounds how long a rank waits for the others at the gather (the
    slowest shard's encoding)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    if not torch.distributed.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed",
                          fix="run without torchrun, or install a torch with distributed support")
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="gloo",
                                             timeout=datetime.timedelta(minutes=timeout_minutes))
    return Ranks(torch.distributed.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))


def close_ranks(ranks: Ranks) -> None:
    if ranks.world > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def shard_bounds(n_items: int, rank: int, world: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s contiguous shard of ``n_items``: sizes differ by
    at most one, earlier ranks take the remainder, and the shards in rank order tile
    ``0..n_items`` (a rank may get an empty shard when there are fewer items than ranks)."""
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"rank {rank} of world size {world} is not a valid process rank")
    base, extra = divmod(n_items, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def encode_shard(model: MEETModel, dataset: Any, ranks: Ranks, batch_size: int = 256,
                 progress: Callable[[int, int], None] | None = None) -> tuple[Encoded, Encoded]:
    """This rank's shard of the split's images and of its captions (``progress(done,
    total)`` over the shard's images then captions)."""
    image_start, image_stop = shard_bounds(dataset.n_images, ranks.rank, ranks.world)
    caption_start, caption_stop = shard_bounds(len(dataset.captions), ranks.rank, ranks.world)
    n_images = image_stop - image_start
    total = n_images + caption_stop - caption_start

    def offset(by: int) -> Callable[[int, int], None] | None:
        return None if progress is None else (lambda done, _total: progress(by + done, total))

    batches = (dataset.images(range(s, min(s + batch_size, image_stop)))
               for s in range(image_start, image_stop, batch_size))
    images = model.encode_image_batches(batches, n_images, batch_size, progress=offset(0))
    texts = model.encode_texts(list(dataset.captions[caption_start:caption_stop]), batch_size=batch_size * 4,
                               progress=offset(n_images))
    return images, texts


def concat_encoded(parts: list[Encoded]) -> Encoded:
    """Shards in order as one :class:`Encoded` (``seconds``: the slowest shard's, the wall
    time of encoding in parallel)."""
    if not parts:
        raise ConfigError("no shards to concatenate")
    return Encoded(*(np.concatenate([getattr(p, name) for p in parts]) for name in ("dense", "hash", "codes",
                                                                                       "pq_codes")),
                   seconds=max(p.seconds for p in parts))


def gather_encoded(local: Encoded, ranks: Ranks) -> Encoded | None:
    """Every rank's shard on rank 0, concatenated in rank order; None on the other ranks."""
    if ranks.world == 1:
        return local
    parts: list[Any] | None = [None] * ranks.world if ranks.main else None
    torch.distributed.gather_object(local, parts, dst=0)
    return concat_encoded(parts) if ranks.main else None
