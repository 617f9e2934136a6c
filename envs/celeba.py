"""CelebA — 40 binary face attributes with a 9-layer CNN (FAMO's benchmark, used by IMGrad).

Liu et al., "Deep Learning Face Attributes in the Wild", ICCV 2015,
https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html. As an MTL benchmark: Liu et al., "FAMO:
Fast Adaptive Multitask Optimization", NeurIPS 2023, https://arxiv.org/abs/2306.03792.

Reference code followed: FAMO ``experiments/celeba/{data,models,trainer}.py`` (commit
0a6ad06; docs/benchmarks.md §CelebA).

Data (read from ``root``, never downloaded). The aligned release in any of these layouts:

* official (FAMO's): ``Img/img_align_celeba/*.jpg``, ``Anno/list_attr_celeba.txt``,
  ``Eval/list_eval_partition.txt``;
* flat: ``img_align_celeba/``, ``list_attr_celeba.txt``, ``list_eval_partition.txt``;
* torchvision's: the flat layout inside ``celeba/``.

``list_attr_celeba.txt``: line 1 the image count, line 2 the 40 attribute names (the task
names, in file order), then ``NNNNNN.jpg`` and 40 values in {−1, 1} per line, mapped to
{0, 1}. ``list_eval_partition.txt``: ``NNNNNN.jpg s`` with s = 0/1/2 → train/val/test
(162,770 / 19,867 / 19,962 images). Every count, value, name and image is checked at
construction. Images: ``Resize((64, 64))`` (aspect ratio not kept), ``ToTensor()``; no
normalisation, no augmentation — as FAMO.

Model (FAMO ``Network``): shared 9-layer CNN — 3×3 conv (no bias) + BN + ReLU with
64 → MaxPool → 128, 128 → MaxPool → 256, 256 → MaxPool → 512, 512 → global average pool
→ [Linear(512, 512, no bias) + BN1d + ReLU] × 2 — whose 512-d output is the shared
representation; 40 heads Linear(512, 1). ``build_model(width=w)`` scales every channel
count by w/64 (64 = the reference; smaller only for tests).
``build_model(arch=...)`` recombines the same encoder and heads into another of LibMTL's
architectures (all but mtan, which needs a ResNet; docs/architectures.md).

Loss: binary cross-entropy per attribute, batch mean. FAMO applies ``sigmoid`` in the model
and ``nn.BCELoss``; here heads output logits and the loss is
``binary_cross_entropy_with_logits`` — the same function, numerically stable where
BCELoss clamps log(0) to −100 (a deliberate difference that only matters for saturated
outputs).

Metrics: per attribute ``f1`` (↑; threshold 0.5 on the sigmoid, TP/FP/FN pooled over the
split, FAMO ``CelebaMetrics``) — the metric of the published tables (Δm over the 40 F1
values, docs/delta_m.md §1) and the only one declared in ``metrics`` — plus ``acc``
(↑, fraction of correct labels) reported by the evaluator as a diagnostic.

Protocol (FAMO ``trainer.py`` defaults): Adam lr 3e-4, batch 256, 15 epochs, no schedule,
3 seeds; reported test F1 at the epoch with the best mean validation F1. The single-task
F1 references needed for Δm were not found (docs/benchmarks.md §Single-task references), so
``stl_reference`` is None.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import Dataset

from envs import architectures
from envs._sampling import EpochDataLoader, ShardedBatchSampler, worker_options
from envs.base import Benchmark, Evaluator, Forward, Metric, MTLModel, Protocol, register
from envs.metrics import Accuracy, BinaryF1

NUM_ATTRIBUTES = 40
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}

#: (image folder, attribute file, partition file) relative to root, tried in this order
LAYOUTS = {
    "official": ("Img/img_align_celeba", "Anno/list_attr_celeba.txt",
                 "Eval/list_eval_partition.txt"),
    "flat": ("img_align_celeba", "list_attr_celeba.txt", "list_eval_partition.txt"),
    "torchvision": ("celeba/img_align_celeba", "celeba/list_attr_celeba.txt",
                    "celeba/list_eval_partition.txt"),
}
LAYOUT_HELP = "; ".join(f"{k}: <root>/{{{', '.join(v)}}}" for k, v in LAYOUTS.items())


# ---------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------


def find_layout(root: Path) -> tuple[str, Path, Path, Path]:
    """The first layout whose attribute file exists; its other files must exist too."""
    if not root.is_dir():
        raise FileNotFoundError(
            f"CelebA root {str(root)!r} is not a directory; expected {LAYOUT_HELP}"
        )
    for name, (img, attr, part) in LAYOUTS.items():
        if (root / attr).is_file():
            paths = (root / img, root / attr, root / part)
            for p, kind in zip(paths, ("image folder", "attribute file", "partition file")):
                if not p.exists():
                    raise FileNotFoundError(
                        f"CelebA ({name} layout): {kind} {str(p)!r} is missing; expected "
                        f"<root>/{{{', '.join(LAYOUTS[name])}}}"
                    )
            return (name, *paths)
    raise FileNotFoundError(
        f"no list_attr_celeba.txt under {str(root)!r}; expected one of the aligned-CelebA "
        f"layouts {LAYOUT_HELP}"
    )


def read_attributes(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Parse ``list_attr_celeba.txt`` → (attribute names, image names, labels {0,1} uint8).

    The 202,599 × 40 body goes through pandas' C parser (a Python token list would take
    ~0.5 GB); blank lines are skipped."""
    import pandas as pd

    with open(path) as f:
        first, second = f.readline(), f.readline()
    try:
        count = int(first.strip())
    except ValueError:
        raise ValueError(
            f"{path}: line 1 must be the number of images, got {first[:80]!r}"
        ) from None
    attrs = second.split()
    if len(attrs) != NUM_ATTRIBUTES or len(set(attrs)) != NUM_ATTRIBUTES:
        raise ValueError(
            f"{path}: line 2 must hold the {NUM_ATTRIBUTES} distinct attribute names, got "
            f"{len(attrs)} ({len(set(attrs))} distinct)"
        )
    width = NUM_ATTRIBUTES + 1
    try:
        table = pd.read_csv(path, sep=r"\s+", skiprows=2, header=None, dtype={0: str})
    except pd.errors.EmptyDataError:
        table = pd.DataFrame(np.empty((0, width)))
    except pd.errors.ParserError as e:
        raise ValueError(
            f"{path}: {e}; every row must be an image name and {NUM_ATTRIBUTES} values in {{-1, 1}}"
        ) from None
    if table.shape[1] != width:
        raise ValueError(f"{path}: rows have {table.shape[1]} fields, expected {width} "
                         f"(an image name and {NUM_ATTRIBUTES} values)")
    if len(table) != count:
        raise ValueError(f"{path}: line 1 says {count} images but {len(table)} rows follow")
    names = table[0].to_numpy(dtype=str)
    values = table.iloc[:, 1:].to_numpy()
    ok = (values == 1) | (values == -1)
    if not ok.all():
        r, c = np.argwhere(~ok)[0]
        raise ValueError(
            f"{path}: row {r + 1} ({names[r]}) has value {values[r, c]} for {attrs[c]} (nan = "
            "missing); values must be -1 or 1"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: image names are not unique")
    return attrs, names, (values == 1).astype(np.uint8)


def read_partition(path: Path) -> dict[str, int]:
    """Parse ``list_eval_partition.txt`` → {image name: 0/1/2}."""
    out: dict[str, int] = {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise ValueError(
                f"{path}: line {i} must be '<image name> <0|1|2>' (train/val/test), "
                f"got {line[:80]!r}"
            )
        if parts[0] in out:
            raise ValueError(f"{path}: image {parts[0]} is listed twice")
        out[parts[0]] = int(parts[1])
    return out


class CelebADataset(Dataset):
    """(image [3, S, S] in [0, 1], labels [40] float in {0, 1}) pairs of one split."""

    def __init__(self, image_dir: Path, names: list[str], labels: Tensor, image_size: int):
        from torchvision import transforms

        self.image_dir, self.names, self.labels = image_dir, names, labels
        self.transform = transforms.Compose(
            [transforms.Resize((image_size, image_size)), transforms.ToTensor()]
        )

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        with Image.open(self.image_dir / self.names[i]) as img:
            x = self.transform(img.convert("RGB"))
        return x, self.labels[i]


# ---------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def celeba_encoder(width: int = 64) -> nn.Sequential:
    """FAMO's shared 9-layer CNN (see the module docstring), 8·width-d output."""
    w = width
    pool = nn.MaxPool2d(2, stride=2)
    return nn.Sequential(
        *_conv(3, w), pool,
        *_conv(w, 2 * w), *_conv(2 * w, 2 * w), pool,
        *_conv(2 * w, 4 * w), *_conv(4 * w, 4 * w), pool,
        *_conv(4 * w, 8 * w), *_conv(8 * w, 8 * w),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8 * w, 8 * w, bias=False), nn.BatchNorm1d(8 * w), nn.ReLU(),
        nn.Linear(8 * w, 8 * w, bias=False), nn.BatchNorm1d(8 * w), nn.ReLU(),
    )


def celeba_stages(encoder: nn.Sequential) -> list[nn.Module]:
    """Stem conv-pool, then one block per resolution (the last with the pool and MLP)."""
    return [encoder[0:4], encoder[4:11], encoder[11:18], encoder[18:32]]


def _stacked_logits(outs: dict[str, Tensor], rep: Tensor | None, x: Tensor,
                    task: str | None) -> tuple[Tensor, Tensor | None]:
    return torch.cat(list(outs.values()), dim=1), rep  # CelebANet's convention, task order


def _check_width(width: Any) -> None:
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive integer (64 = FAMO's network), got {width!r}")


class CelebANet(MTLModel):
    """FAMO's 9-layer CNN (shared) with one Linear(8w, 1) logit head per attribute."""

    def __init__(self, tasks: tuple[str, ...], width: int = 64):
        super().__init__()
        _check_width(width)
        self.tasks = tuple(tasks)
        self.encoder = celeba_encoder(width)
        self.heads = nn.ModuleDict({t: nn.Linear(8 * width, 1) for t in self.tasks})

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """→ (logits [B, 40] in task order, representation [B, 8w])."""
        rep = self.encoder(x)
        return torch.cat([self.heads[t](rep) for t in self.tasks], dim=1), rep


# ---------------------------------------------------------------------------------------
# benchmark
# ---------------------------------------------------------------------------------------


class CelebAEvaluator(Evaluator):
    """Per-attribute F1 (FAMO) and accuracy, pooled over the split."""

    def __init__(self, tasks: tuple[str, ...]):
        self.tasks = tasks
        self.f1 = BinaryF1(num_labels=len(tasks), threshold=0.5, from_logits=True)
        self.acc = [Accuracy() for _ in tasks]

    def update(self, forward: Forward, batch: Any) -> None:
        logits, y = forward.outputs["logits"].detach(), batch[1]
        self.f1.update(logits, y)
        pred = (logits > 0).long()
        for k, acc in enumerate(self.acc):
            acc.update(pred[:, k], y[:, k].long())

    def all_reduce_(self) -> CelebAEvaluator:
        """Sum the states over torch.distributed ranks (each rank evaluated its shard)."""
        for a in (self.f1, *self.acc):
            a.all_reduce_()
        return self

    def compute(self) -> dict[str, dict[str, float]]:
        f1 = self.f1.compute()
        return {t: {"f1": f1[k], "acc": self.acc[k].compute()} for k, t in enumerate(self.tasks)}


@register("celeba")
class CelebA(Benchmark):
    """CelebA, 40 attributes, FAMO protocol. See the module docstring."""

    description = "CelebA: 40 binary face attributes, 9-layer CNN (FAMO protocol)"
    options: Mapping[str, Any] = {"image_size": 64}
    protocol = Protocol(
        optimizer="adam", lr=3e-4, batch_size=256, epochs=15, lr_schedule="none",
        selection="best_val", average_last=1,
        source="FAMO experiments/celeba/trainer.py (lr 3e-4, batch 256, 15 epochs, Adam, "
               "test F1 at the epoch of best mean validation F1)",
    )
    stl_reference = None
    stl_reference_source = (
        "NOT FOUND: no published single-task CelebA F1 values "
        "(docs/benchmarks.md §Single-task references); "
        "FAMO's experiments/celeba/trainer_one_task.py produces them"
    )

    def __init__(self, root: str | os.PathLike | None = None, image_size: int = 64):
        if root is None:
            raise ValueError(f"celeba needs root=<path to aligned CelebA>; expected {LAYOUT_HELP}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"image_size must be an integer >= 8 (FAMO: 64), got {image_size!r}")
        self.root = Path(root)
        self.image_size = image_size
        self.layout, self.image_dir, attr_file, part_file = find_layout(self.root)
        attrs, names, labels = read_attributes(attr_file)
        part = read_partition(part_file)
        if set(part) != set(names):
            missing = sorted(set(names) - set(part))
            extra = sorted(set(part) - set(names))
            raise ValueError(
                f"{part_file} and {attr_file} list different images: {len(missing)} only in the "
                f"attribute file (e.g. {missing[:3]}), {len(extra)} only in the partition file "
                f"(e.g. {extra[:3]})"
            )
        present = set(os.listdir(self.image_dir))
        absent = [n for n in names if n not in present]
        if absent:
            raise FileNotFoundError(
                f"{len(absent)} images listed in {attr_file} are missing from {self.image_dir} "
                f"(e.g. {absent[:3]})"
            )
        self.tasks = tuple(attrs)
        self.metrics = {t: (Metric("f1", higher_is_better=True),) for t in self.tasks}
        codes = np.array([part[n] for n in names])
        self._split: dict[str, tuple[list[str], Tensor]] = {}
        for split, code in SPLIT_CODES.items():
            idx = np.flatnonzero(codes == code)  # file order, as FAMO
            self._split[split] = (names[idx].tolist(), torch.from_numpy(labels[idx]).float())

    def dataset(self, split: str) -> CelebADataset:
        if split not in self._split:
            raise ValueError(f"split must be one of {list(self._split)}, got {split!r}")
        names, labels = self._split[split]
        return CelebADataset(self.image_dir, names, labels, self.image_size)

    def build_model(self, width: int = 64, arch: str | None = None,
                    **arch_options: Any) -> MTLModel:
        """FAMO's HPS network, or ``arch=<name>`` on the same encoder and heads: hps,
        cross_stitch, mmoe, cgc, ple, dselect_k, ltb (not mtan: no ResNet); see
        docs/architectures.md."""
        architectures.check_option_names(self.name, arch_options, ["width"])
        if arch in (None, "hps") and not arch_options:
            return CelebANet(self.tasks, width=width)
        return architectures.build(arch or "hps", self.architecture_spec(width), **arch_options)

    def architecture_spec(self, width: int = 64) -> architectures.ArchSpec:
        """The CNN (stem + three blocks, :func:`celeba_stages`), Linear(8w, 1) heads,
        3×S×S images."""
        _check_width(width)
        return architectures.ArchSpec(
            benchmark=self.name, tasks=self.tasks,
            encoder=functools.partial(celeba_encoder, width),
            head=lambda task: nn.Linear(8 * width, 1), collate=_stacked_logits,
            input_shape=(3, self.image_size, self.image_size), stages=celeba_stages,
        )  # fmt: skip

    def make_loader(self, split: str, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                    rank: int = 0, world_size: int = 1, drop_last: bool = False,
                    num_workers: int = 0, pin_memory: bool = False) -> EpochDataLoader:
        """Batches ``(images [B, 3, S, S], labels [B, 40])``; ``batch_size`` is per rank.
        Each ``iter()`` is the next seeded pass (``loader.set_epoch(e)`` to resume); see
        :mod:`envs._sampling` for the sharding rules."""
        ds = self.dataset(split)
        sampler = ShardedBatchSampler(len(ds), batch_size, shuffle=shuffle, seed=seed, rank=rank,
                                      world_size=world_size, drop_last=drop_last)
        return EpochDataLoader(ds, batch_sampler=sampler, **worker_options(num_workers, pin_memory))

    def forward_losses(self, model: MTLModel, batch: Any) -> Forward:
        x, y = batch
        logits, rep = model(x)
        losses = F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(0)
        return Forward(losses=losses, rep=rep, outputs={"logits": logits})

    def new_evaluator(self) -> CelebAEvaluator:
        return CelebAEvaluator(self.tasks)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "root": str(self.root),
            "layout": self.layout,
            "image_size": self.image_size,
            "split_sizes": {s: len(v[0]) for s, v in self._split.items()},
        }
