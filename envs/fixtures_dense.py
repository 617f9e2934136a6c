"""Tiny NYUv2 / Cityscapes fixtures in the exact on-disk layout of lorenmt/mtan's release.

The writers produce ``<root>/{train,val}/<folder>/<i>.npy`` with the release's folder names,
file names, channels-last shapes and value encodings (−1 = void labels, 0 = missing depth,
zero-vector = missing normal, inverse depth for Cityscapes), so the benchmarks read them
through the same code as the real data. Values are random (seeded): they test plumbing,
not learning.

Size: the ``.npy`` format fixes no resolution (one array per sample), and the loaders accept
any H × W shared by all files, so fixtures default to 32 × 32 (the smallest size SegNet's five
poolings allow; a sample is a few KB). ``size=(288, 384)`` / ``(128, 256)`` writes the
published resolution. The on-disk label dtype of the release is unverified (benchmarks.md
§10.3: loaders cast to float/long); ``label_dtype`` lets tests cover integer and float files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

NYUV2_CLASSES = 13
CITYSCAPES_LABEL_FOLDERS = {2: "label_2", 7: "label_7", 19: "label_19"}


def _labels(rng: np.random.Generator, size: tuple[int, int], num_classes: int, dtype) -> np.ndarray:
    lab = rng.integers(0, num_classes, size=size)
    lab[rng.random(size) < 0.1] = -1  # void
    return lab.astype(dtype)


def _with_holes(rng: np.random.Generator, a: np.ndarray, frac: float = 0.1) -> np.ndarray:
    a[rng.random(a.shape[:2]) < frac] = 0  # missing ground truth
    return a


def _save(path: Path, a: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, a)


def write_nyuv2(
    root: str | os.PathLike,
    *,
    n_train: int = 4,
    n_test: int = 3,
    size: tuple[int, int] = (32, 32),
    label_dtype=np.float32,
    seed: int = 0,
) -> Path:
    """Write a miniature NYUv2 (MTAN layout) under ``root``; returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    H, W = size
    for split, n in (("train", n_train), ("val", n_test)):
        d = root / split
        for i in range(n):
            _save(d / "image" / f"{i}.npy", rng.random((H, W, 3), dtype=np.float32))
            _save(d / "label" / f"{i}.npy", _labels(rng, (H, W), NYUV2_CLASSES, label_dtype))
            depth = rng.uniform(0.5, 10.0, size=(H, W, 1)).astype(np.float32)
            _save(d / "depth" / f"{i}.npy", _with_holes(rng, depth))
            normal = rng.normal(size=(H, W, 3)).astype(np.float32)
            normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
            _save(d / "normal" / f"{i}.npy", _with_holes(rng, normal))
    return root


def write_cityscapes(
    root: str | os.PathLike,
    *,
    n_train: int = 4,
    n_test: int = 3,
    size: tuple[int, int] = (32, 32),
    label_dtype=np.float32,
    seed: int = 0,
) -> Path:
    """Write a miniature Cityscapes (MTAN layout: label_2/7/19, inverse depth) under ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    H, W = size
    for split, n in (("train", n_train), ("val", n_test)):
        d = root / split
        for i in range(n):
            _save(d / "image" / f"{i}.npy", rng.random((H, W, 3), dtype=np.float32))
            for c, folder in CITYSCAPES_LABEL_FOLDERS.items():
                _save(d / folder / f"{i}.npy", _labels(rng, (H, W), c, label_dtype))
            inv_depth = rng.uniform(0.005, 0.49, size=(H, W, 1)).astype(np.float32)
            _save(d / "depth" / f"{i}.npy", _with_holes(rng, inv_depth))
    return root
