"""Seeded, resumable, rank-sharded batching shared by the benchmark loaders.

A loader made with ``(batch_size=B, world_size=W, rank=r)`` walks the same global order as a
single-process loader with batch size ``B·W`` and hands rank ``r`` the ``r``-th block of
``B`` of every global batch. So the concatenation over ranks of step ``k``'s batches *is*
the single-process batch ``k`` of size ``B·W``, every rank runs the same number of steps,
and (with ``drop_last=True``) every per-rank batch has exactly ``B`` examples — what
:mod:`methods.engine` needs for its distributed updates to equal the single-process ones.

With ``drop_last=False`` (training and evaluation) every example appears exactly once over
all ranks: the final, incomplete global batch of ``r`` examples is split into ``W``
near-equal contiguous parts (sizes differ by at most one). Every rank still takes the same
number of steps: a rank whose part is empty (``r < W``) gets a one-example *pad* batch
(the chunk's first example) that :func:`shard_sizes` counts as zero examples.
``shard_sizes(n, B, W, k)`` gives the real per-rank counts of step ``k``; a trainer that
scales rank ``r``'s (per-example mean) losses by ``W·n_r / N`` before the engine's
mean-all-reduce gets the mean over the ``N`` examples of the global batch, so a W-worker
epoch is the single-process epoch, last partial batch included (docs/ray.md §7).

Shuffling: pass ``k`` over the data (the ``k``-th ``iter()`` of a sampler, or the pass set
with :meth:`ShardedBatchSampler.set_epoch`) uses ``torch.randperm`` under a generator
seeded from ``(seed, stream, k)`` via NumPy's ``SeedSequence``, so orders never coincide
across seeds/epochs and a resumed run reproduces them exactly.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler


def pass_generator(seed: int, stream: int, pass_index: int) -> torch.Generator:
    """The generator of one shuffled pass (independent streams for every triple)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(stream), int(pass_index)])
    return torch.Generator().manual_seed(int(state.generate_state(1, dtype=np.uint64)[0] >> 1))


def check_shard(batch_size: int, rank: int, world_size: int) -> None:
    """``ValueError`` for impossible batching arguments."""
    for name, value in (("batch_size", batch_size), ("world_size", world_size), ("rank", rank)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(
            f"rank must be in [0, {world_size - 1}] for world_size={world_size}, got {rank}"
        )


def pass_order(n: int, shuffle: bool, seed: int, stream: int, pass_index: int) -> torch.Tensor:
    if shuffle:
        return torch.randperm(n, generator=pass_generator(seed, stream, pass_index))
    return torch.arange(n)


def rank_batches(order: torch.Tensor, batch_size: int, rank: int, world_size: int,
                 drop_last: bool) -> list[list[int]]:
    """This rank's batches of one pass over ``order`` (see the module docstring)."""
    g = batch_size * world_size
    n = len(order)
    out = []
    for start in range(0, n, g):
        chunk = order[start:start + g]
        if len(chunk) == g:
            out.append(chunk[rank * batch_size:(rank + 1) * batch_size].tolist())
            continue
        if drop_last:
            break
        q, extra = divmod(len(chunk), world_size)
        lo = rank * q + min(rank, extra)
        part = chunk[lo:lo + q + (1 if rank < extra else 0)]
        out.append(part.tolist() if len(part) else chunk[:1].tolist())  # empty: a pad batch
    return out


def num_rank_batches(n: int, batch_size: int, rank: int, world_size: int, drop_last: bool) -> int:
    """Steps of one pass; the same on every rank (``rank`` is kept for the signature)."""
    full, rest = divmod(n, batch_size * world_size)
    return full + int(rest > 0 and not drop_last)


def shard_sizes(n: int, batch_size: int, world_size: int, step: int) -> list[int]:
    """The real example counts of every rank at ``step`` of a pass over ``n`` examples
    (``batch_size`` per rank): ``batch_size`` each for a full global batch; the final
    partial one of ``r`` examples split ``r // W`` (+1 for the first ``r % W`` ranks).
    A pad batch counts 0. Strided sharding (``DistributedSampler``-like, without padding)
    gives the same counts."""
    g = batch_size * world_size
    rest = min(g, max(0, n - step * g))
    if rest == g:
        return [batch_size] * world_size
    q, extra = divmod(rest, world_size)
    return [q + (1 if r < extra else 0) for r in range(world_size)]


class ShardedBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices for one rank; each ``iter()`` is the next pass.

    ``stream`` separates independent orders drawn under the same seed (e.g. one per task
    of a multi-input benchmark)."""

    def __init__(self, n: int, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool = False,
                 stream: int = 0) -> None:
        check_shard(batch_size, rank, world_size)
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.drop_last, self.stream = drop_last, stream
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` pass number ``epoch`` (for exact resumption)."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        order = pass_order(self.n, self.shuffle, self.seed, self.stream, self.epoch)
        self.epoch += 1
        yield from rank_batches(order, self.batch_size, self.rank, self.world_size, self.drop_last)

    def __len__(self) -> int:
        return num_rank_batches(self.n, self.batch_size, self.rank, self.world_size, self.drop_last)

    def shard_sizes(self, step: int) -> list[int]:
        """Every rank's real example count at ``step`` (:func:`shard_sizes`)."""
        return shard_sizes(self.n, self.batch_size, self.world_size, step)


class CyclingBatchSampler(Sampler[list[int]]):
    """``count`` batches of an endless sequence of shuffled passes, starting at batch
    ``start`` of that sequence (LibMTL's multi-input training: a task whose loader runs out
    restarts it, and its position carries over to the next epoch). Incomplete batches are
    always dropped, as LibMTL's training loaders do."""

    def __init__(self, n: int, batch_size: int, *, start: int, count: int, seed: int,
                 stream: int, rank: int = 0, world_size: int = 1) -> None:
        check_shard(batch_size, rank, world_size)
        self.per_pass = n // (batch_size * world_size)
        if self.per_pass == 0:
            raise ValueError(
                f"{n} examples are fewer than one global batch (batch_size {batch_size} x "
                f"world_size {world_size}); lower the batch size"
            )
        self.n, self.batch_size, self.start, self.count = n, batch_size, start, count
        self.seed, self.stream, self.rank, self.world_size = seed, stream, rank, world_size

    def __iter__(self) -> Iterator[list[int]]:
        pos, end = self.start, self.start + self.count
        while pos < end:
            p, j = divmod(pos, self.per_pass)
            order = pass_order(self.n, True, self.seed, self.stream, p)
            batches = rank_batches(order, self.batch_size, self.rank, self.world_size, True)
            take = batches[j:j + (end - pos)]
            yield from take
            pos += len(take)

    def __len__(self) -> int:
        return self.count

    def shard_sizes(self, step: int) -> list[int]:
        """Batches are always complete: ``batch_size`` on every rank."""
        return [self.batch_size] * self.world_size


def worker_options(num_workers: int = 0, pin_memory: bool = False) -> dict[str, object]:
    """``DataLoader`` keyword arguments for ``num_workers`` loader processes.

    Workers are persistent across passes (a pass is one ``iter()``; re-forking them every
    epoch costs seconds on real datasets) and prefetch two batches each. The batch sampler
    runs in the main process and every example's augmentation is keyed by (pass, index), so
    the batches — order and content — are the same for any ``num_workers``. ``pin_memory``
    puts batches in page-locked host memory, which makes the trainer's
    ``tensor.to(cuda, non_blocking=True)`` copies asynchronous."""
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be a non-negative integer, got {num_workers!r}")
    opts: dict[str, object] = {"num_workers": num_workers, "pin_memory": bool(pin_memory)}
    if num_workers > 0:
        opts.update(persistent_workers=True, prefetch_factor=2)
    return opts


class EpochDataLoader(DataLoader):
    """A ``DataLoader`` over a sharded batch sampler; ``set_epoch(e)`` makes the next
    iteration pass ``e`` (each iteration otherwise advances to the next pass)."""

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)  # type: ignore[union-attr]

    def shard_sizes(self, step: int) -> list[int] | None:
        """Every rank's real example count at ``step`` (None if the sampler cannot say);
        looks through sampler wrappers that keep the sharded sampler as ``inner``."""
        sampler = self.batch_sampler
        while sampler is not None and not hasattr(sampler, "shard_sizes"):
            sampler = getattr(sampler, "inner", None)
        return None if sampler is None else sampler.shard_sizes(step)
