"""Small-fixture writers for tests: tiny datasets in the real on-disk formats.

Convention (every benchmark follows it):

* tests never download anything; a benchmark that reads a root is tested on a tiny fixture
  written in the *published* layout (same folders, file names, dtypes and shapes per item,
  just few items and, where it keeps the format valid, small images), so the real loader
  code runs unchanged;
* each benchmark's writers live in their own module next to it, named
  ``envs/fixtures_<benchmark or family>.py`` (e.g. ``envs/fixtures_dense.py`` for
  NYUv2/Cityscapes), not here; this module holds only shared primitives, and is owned by
  the shared-metrics helper;
* a writer takes the target directory (pytest's ``tmp_path``) and a seed, is deterministic
  in them, and returns the root to pass as ``envs.create(name, root=...)``;
* fixtures are data, not expectations: tests compute expected metric values from the
  arrays they wrote, never from numbers hard-coded elsewhere.

``multi_digits`` and ``toy`` need no fixture (their data ship with the code).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np


def rng(seed: int) -> np.random.Generator:
    """The random generator every fixture writer uses for its content."""
    return np.random.default_rng(seed)


def write_indexed_npy(
    root: str | Path, split: str, folder: str, arrays: Sequence[np.ndarray]
) -> Path:
    """Write ``<root>/<split>/<folder>/<i>.npy`` for i = 0…len(arrays)−1 (MTAN's NYUv2 and
    Cityscapes layout: contiguous integer names, one array per file). Returns the folder."""
    out = Path(root) / split / folder
    out.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(arrays):
        np.save(out / f"{i}.npy", np.asarray(a))
    return out


def write_text(path: str | Path, lines: Iterable[str]) -> Path:
    """Write ``lines`` (newline-terminated) to ``path``, creating parent folders."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(f"{line}\n" for line in lines))
    return p
