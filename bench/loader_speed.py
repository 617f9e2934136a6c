"""Images per second of the benchmark loaders with 0 vs N loader processes
(``train.loader_workers``), on fixtures in the real layouts scaled to the real image sizes.

Datasets cannot be downloaded here, so the fixtures are written first (``envs.fixtures``):
NYUv2 at the MTAN layout's 288 × 384 (image, 13-class label, depth, normals as ``.npy``,
random crop/flip augmentation on) and aligned CelebA at its release size 178 × 218 (JPEG
decode + resize to 64 × 64, as FAMO). Each (dataset, workers) case iterates whole training
passes of the loader the trainer builds (persistent workers, ``set_epoch`` per pass) and
drops the batches, so the number is what the loader alone can feed a GPU. Cases alternate
round by round so that a shared machine's slowdowns fall on all of them; the table gives the
median over rounds and the ratio to 0 workers in the same run. Run by hand, not in CI:

    .venv/bin/python bench/loader_speed.py                      # workers 0, 1, 2
    .venv/bin/python bench/loader_speed.py --workers 0 4 8 --nyu 256 --celeba 4096
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import envs
from envs.fixtures.dense import write_nyuv2
from envs.fixtures.files import write_celeba


def _benches(root: Path, n_nyu: int, n_celeba: int) -> dict[str, tuple[object, int]]:
    nyu = envs.create("nyuv2", root=write_nyuv2(root / "nyu", n_train=n_nyu, n_test=2,
                                                size=(288, 384)))
    partition = (0,) * n_celeba + (1,) * 2 + (2,) * 2
    write_celeba(root / "celeba", partition, image_size=(178, 218))
    celeba = envs.create("celeba", root=root / "celeba")
    return {"nyuv2 288x384": (nyu, 8), "celeba 64x64": (celeba, 128)}


def _one_pass(loader, epoch: int) -> tuple[int, float]:
    loader.set_epoch(epoch)
    start, n = time.perf_counter(), 0
    for batch in loader:
        first = batch["image"] if isinstance(batch, dict) else batch[0]
        n += int(first.shape[0])
    return n, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--nyu", type=int, default=64, help="NYUv2 training images")
    ap.add_argument("--celeba", type=int, default=1024, help="CelebA training images")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        benches = _benches(Path(tmp), args.nyu, args.celeba)
        loaders = {(name, w): bench.make_loader("train", batch, shuffle=True, seed=0,
                                                num_workers=w)
                   for name, (bench, batch) in benches.items() for w in args.workers}
        for loader in loaders.values():  # start the workers; the first pass is untimed
            _one_pass(loader, 0)
        rates: dict[tuple[str, int], list[float]] = {k: [] for k in loaders}
        for r in range(args.rounds):
            order = list(loaders) if r % 2 == 0 else list(reversed(loaders))
            for key in order:
                n, dt = _one_pass(loaders[key], r + 1)
                rates[key].append(n / dt)
    print(f"| loader | workers | images/s (median of {args.rounds}) | × 0 workers |")
    print("|---|---|---|---|")
    for (name, w), xs in rates.items():
        base = statistics.median(rates[(name, args.workers[0])])
        med = statistics.median(xs)
        print(f"| {name} | {w} | {med:.1f} | {med / base:.2f} |")


if __name__ == "__main__":
    main()
