"""Shared machinery of the MTAN-format dense-prediction benchmarks (NYUv2, Cityscapes).

Not a benchmark itself (the leading underscore keeps ``envs/__init__`` from importing it as
one); :mod:`envs.nyuv2` and :mod:`envs.cityscapes` subclass :class:`DenseBenchmark` and give
the dataset-specific parts (folders, classes, resolution, protocols, STL references).

On-disk layout (lorenmt/mtan's preprocessed release; docs/benchmarks.md §NYUv2, §Cityscapes)::

    <root>/<split>/<folder>/<i>.npy      i = 0 … N−1, contiguous, the same set in every folder

channels-last arrays: image (H, W, 3) float; label (H, W) with −1 = void (integer or
integral float); depth (H, W, 1) float with 0 = missing; normal (H, W, 3) float unit vectors
with 0 = missing. Loaders cast to float32 / int64 and move channels first, as the reference
loaders do. ``<root>/val`` is the *test* split of every paper using this release (there is no
validation split); ``val_size > 0`` optionally holds out a fixed random subset of the train
images as a validation split (for model selection / tuning without touching the test set).

Resolution: the format stores one array per sample, so nothing in it fixes H × W; loaders
accept any size that is the same for every file of every split (tiny fixtures use 32 × 32).
The published releases are 288 × 384 (NYUv2) and 128 × 256 (Cityscapes; a 256 × 512
version also exists). At another size a warning is logged and the STL reference is dropped,
since the published single-task numbers only hold at the standard size.

The whole layout (folders, file sets, array shapes and dtypes from the ``.npy`` headers) is
checked when the benchmark is built with a root; a violation is a ``ValueError`` naming the
file and the expected layout. Label values are checked when a sample is loaded.

Augmentation (CAGrad / nash-mtl / FAMO ``RandomScaleCrop`` + flip, credited there to
lorenmt/mtan#34; train split only): scale s ∈ {1.0, 1.2, 1.5}, crop an (⌊H/s⌋ × ⌊W/s⌋) window at
a uniform offset and resize it back (image and normals bilinear with ``align_corners=True``,
label and depth nearest), depth ÷ s; then a horizontal flip with p = 0.5 that negates the
normals' x component. The reference draws from Python's and torch's global RNGs; here every
sample's draw comes from a generator seeded by (seed, pass, sample index), so augmentation
is reproducible, resumable and independent of ``num_workers`` and sharding.

Losses (identical in mtan, CAGrad, nash-mtl, FAMO and LibMTL;
docs/benchmarks.md §Dense-prediction metrics):

* segmentation: cross-entropy on logits with ``ignore_index=-1`` (= the reference's NLL on
  log-softmax);
* depth: Σ |p − g| over valid pixels / #valid pixels of the whole batch;
* normal: 1 − Σ ⟨p, g⟩ over valid pixels / #valid pixels (p unit-normalised by the model).

Valid pixels are those whose ground truth is not the zero vector — the same rule as
:mod:`envs.metrics` (the references test "channel sum ≠ 0", which differs only for a unit
normal whose components sum to exactly 0). A batch without any valid pixel has loss 0 and
zero gradient for that task (the references divide by zero and produce NaN).
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from envs import architectures
from envs._sampling import EpochDataLoader, ShardedBatchSampler, worker_options
from envs.base import Benchmark, Evaluator, Forward, Metric, MTLModel, Protocol
from envs.metrics import ConfusionMatrix, DepthErrors, NormalErrors
from envs.models import ResNetASPP, SegNetMTAN
from envs.models.resnet_aspp import (
    RESNET50_LAYERS,
    DeepLabHead,
    DilatedResNet,
    load_resnet50_weights,
)

log = logging.getLogger(__name__)

MODELS = ("segnet_mtan", "resnet50_aspp")
METRICS_MODES = ("per_batch", "pooled")
AUG_SCALES = (1.0, 1.2, 1.5)
_AUG_STREAM = 0x5EED  # separates augmentation draws from the sampler's shuffling stream
_VAL_SEED = 20240917  # the held-out validation subset is the same for every run
_NPY = re.compile(r"^(\d+)\.npy$")

SEG_METRICS = (Metric("miou", True), Metric("pixel_acc", True))
DEPTH_METRICS = (Metric("abs_err", False), Metric("rel_err", False))
NORMAL_METRICS = (
    Metric("mean", False),
    Metric("median", False),
    Metric("within_11.25", True),
    Metric("within_22.5", True),
    Metric("within_30", True),
)


# ---------------------------------------------------------------------------------------
# layout
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Modality:
    """One per-sample array kind: batch key, folder on disk, trailing channels (None: 2-D)."""

    key: str
    folder: str
    channels: int | None
    kind: str  # "float" | "label"


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
                shape, dtype = arr.shape, arr.dtype
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        raise ValueError(f"{path}: not a readable .npy array ({e})") from e
    return tuple(shape), np.dtype(dtype)


def _expected(m: Modality) -> str:
    shape = "(H, W)" if m.channels is None else f"(H, W, {m.channels})"
    dt = "integer or float" if m.kind == "label" else "float"
    return f"{shape} {dt}"


@dataclass
class SplitIndex:
    """What a layout scan found for one split folder."""

    path: Path
    count: int
    size: tuple[int, int]


#: a layout scan that has run this long prints a line to stderr every SCAN_LINE_EVERY_S
SCAN_PROGRESS_AFTER_S = 2.0
SCAN_LINE_EVERY_S = 5.0


class ScanProgress:
    """Lines ``scanning <dir>: i/n samples checked`` during a long scan (not silence)."""

    def __init__(self, split_dir: Path, n: int) -> None:
        self.split_dir, self.n = split_dir, n
        self.t0 = time.perf_counter()
        self.last: float | None = None

    def tick(self, i: int) -> None:
        now = time.perf_counter()
        if now - self.t0 < SCAN_PROGRESS_AFTER_S or (
                self.last is not None and now - self.last < SCAN_LINE_EVERY_S):
            return
        self.last = now
        print(f"scanning {self.split_dir}: {i}/{self.n} samples checked", file=sys.stderr,
              flush=True)


def scan_split(split_dir: Path, modalities: Sequence[Modality], layout: str) -> SplitIndex:
    """Check one ``<root>/<split>`` folder completely; ``ValueError`` naming what is wrong."""
    if not split_dir.is_dir():
        raise ValueError(f"split folder {split_dir} not found; expected layout:\n{layout}")
    files: dict[str, set[int]] = {}
    for m in modalities:
        d = split_dir / m.folder
        if not d.is_dir():
            raise ValueError(f"folder {d} not found; expected layout:\n{layout}")
        idx = set()
        for name in os.listdir(d):
            if not name.endswith(".npy"):
                continue
            match = _NPY.match(name)
            if match is None:
                raise ValueError(f"{d / name}: file names must be <i>.npy with an integer i")
            idx.add(int(match.group(1)))
        files[m.folder] = idx
    first = modalities[0]
    n = len(files[first.folder])
    if n == 0:
        raise ValueError(f"{split_dir / first.folder} holds no .npy files; expected layout:\n{layout}")
    missing = sorted(set(range(n)) - files[first.folder])
    if missing:
        raise ValueError(
            f"{split_dir / first.folder} has {n} files but {missing[0]}.npy is missing: "
            f"indices must be 0…{n - 1} without gaps"
        )
    for m in modalities[1:]:
        have = files[m.folder]
        if have != files[first.folder]:
            absent = sorted(files[first.folder] - have)
            extra = sorted(have - files[first.folder])
            what = (
                f"{split_dir / m.folder / f'{absent[0]}.npy'} is missing"
                if absent
                else f"{split_dir / m.folder / f'{extra[0]}.npy'} has no matching {first.folder}"
            )
            raise ValueError(
                f"{what}: {first.folder}/ has {n} files, {m.folder}/ has {len(have)}; every "
                f"folder of {split_dir} must hold the same indices 0…{n - 1}"
            )
    size: tuple[int, int] | None = None
    progress = ScanProgress(split_dir, n)
    for i in range(n):
        progress.tick(i)
        for m in modalities:
            path = split_dir / m.folder / f"{i}.npy"
            shape, dtype = _npy_header(path)
            ok_dtype = (
                np.issubdtype(dtype, np.floating)
                or (m.kind == "label" and np.issubdtype(dtype, np.integer))
            )
            want_dims = 2 if m.channels is None else 3
            ok_shape = len(shape) == want_dims and (m.channels is None or shape[2] == m.channels)
            if not (ok_dtype and ok_shape):
                raise ValueError(
                    f"{path}: array of shape {shape} and dtype {dtype}; expected {_expected(m)} "
                    f"(channels last), layout:\n{layout}"
                )
            hw = (int(shape[0]), int(shape[1]))
            if size is None:
                size = hw
            elif hw != size:
                raise ValueError(
                    f"{path}: spatial size {hw} differs from {size} of "
                    f"{split_dir / first.folder / '0.npy'}; all arrays must share one H × W"
                )
    assert size is not None
    return SplitIndex(split_dir, n, size)


# ---------------------------------------------------------------------------------------
# dataset and augmentation
# ---------------------------------------------------------------------------------------


def sample_generator(seed: int, pass_index: int, index: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, _AUG_STREAM, int(pass_index), int(index)])
    return torch.Generator().manual_seed(int(state.generate_state(1, dtype=np.uint64)[0] >> 1))


def random_scale_crop_flip(sample: dict[str, Tensor], g: torch.Generator) -> dict[str, Tensor]:
    """The reference's RandomScaleCrop + horizontal flip on one channels-first sample."""
    img = sample["image"]
    H, W = img.shape[-2:]
    s = AUG_SCALES[int(torch.randint(len(AUG_SCALES), (1,), generator=g))]
    h, w = int(H / s), int(W / s)
    i = int(torch.randint(H - h + 1, (1,), generator=g))
    j = int(torch.randint(W - w + 1, (1,), generator=g))
    flip = bool(torch.rand((), generator=g) < 0.5)
    out: dict[str, Tensor] = {}
    for key, x in sample.items():
        if key == "index":
            out[key] = x
            continue
        is_label = x.dim() == 2
        y = x.float()[None, None] if is_label else x[None]
        y = y[..., i:i + h, j:j + w]
        if key in ("image", "normal"):
            y = F.interpolate(y, size=(H, W), mode="bilinear", align_corners=True)
        else:
            y = F.interpolate(y, size=(H, W), mode="nearest")
        y = y[0, 0].long() if is_label else y[0]
        if key == "depth":
            y = y / s
        if flip:
            y = torch.flip(y, dims=[-1])
            if key == "normal":
                y = torch.cat([-y[:1], y[1:]], dim=0)
        out[key] = y
    return out


class DenseNpyDataset(Dataset):
    """Samples of one split as dicts {image, <task targets>, index}.

    ``__getitem__`` takes an index or ``(index, pass)``; with ``augment`` the latter draws
    the sample's augmentation from ``(seed, pass, index)``."""

    def __init__(
        self,
        split: SplitIndex,
        modalities: Sequence[Modality],
        indices: Sequence[int],
        num_classes: int,
        *,
        augment: bool = False,
        seed: int = 0,
    ):
        self.split = split
        self.modalities = tuple(modalities)
        self.indices = list(indices)
        self.num_classes = num_classes
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.indices)

    def _load(self, m: Modality, i: int) -> Tensor:
        path = self.split.path / m.folder / f"{i}.npy"
        a = np.load(path, allow_pickle=False)
        if m.kind == "label":
            if np.issubdtype(a.dtype, np.floating):
                if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
                    raise ValueError(f"{path}: label values must be integers (−1 = void)")
            a = a.astype(np.int64)
            bad = (a < -1) | (a >= self.num_classes)
            if bad.any():
                v = int(a[bad].flat[0])
                raise ValueError(
                    f"{path}: label value {v} outside {{-1}} ∪ [0, {self.num_classes - 1}] "
                    f"({self.num_classes} classes, −1 = void)"
                )
            return torch.from_numpy(a)
        return torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, 0), dtype=np.float32))

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Tensor]:
        pos, pass_index = key if isinstance(key, tuple) else (int(key), None)
        i = self.indices[pos]
        sample = {m.key: self._load(m, i) for m in self.modalities}
        sample["index"] = torch.tensor(i)
        if self.augment and pass_index is not None:
            sample = random_scale_crop_flip(sample, sample_generator(self.seed, pass_index, i))
        return sample


class _PassKeyedSampler(Sampler[list[tuple[int, int]]]):
    """Wraps a :class:`ShardedBatchSampler`, tagging each index with its pass number."""

    def __init__(self, inner: ShardedBatchSampler):
        self.inner = inner

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __iter__(self):
        p = self.inner.epoch
        for batch in self.inner:
            yield [(i, p) for i in batch]

    def __len__(self) -> int:
        return len(self.inner)


# ---------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------


def _valid(target: Tensor) -> Tensor:
    """[B, 1, H, W] float mask of pixels whose ground truth is not the zero vector."""
    return (target != 0).any(1, keepdim=True).to(target.dtype)


def segmentation_loss(logits: Tensor, label: Tensor) -> Tensor:
    return F.cross_entropy(logits, label, ignore_index=-1)


def depth_loss(pred: Tensor, target: Tensor) -> Tensor:
    mask = _valid(target)
    return ((pred - target).abs() * mask).sum() / mask.sum().clamp_min(1)


def normal_loss(pred: Tensor, target: Tensor) -> Tensor:
    mask = _valid(target)
    return 1 - (pred * target * mask).sum() / mask.sum().clamp_min(1)


LOSSES = {"segmentation": segmentation_loss, "depth": depth_loss, "normal": normal_loss}


# ---------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------


class DenseEvaluator(Evaluator):
    """Segmentation from one confusion matrix over the split; depth and normals either
    ``pooled`` over every valid pixel of the split or ``per_batch``: the metric of each group
    of ``group_size`` consecutive test samples, averaged over groups (mtan / CAGrad /
    nash-mtl / FAMO with their test batch size; the last group may be shorter, like their
    last test batch). Groups are formed here from the samples in arrival order, so the
    number does not depend on the loader's batch size, but ``per_batch`` needs the whole
    split in dataset order in one process (an unshuffled test loader, no sharding); a
    violation raises ``ValueError``. ``pooled`` states are sums, so :meth:`all_reduce_`
    combines ranks exactly."""

    def __init__(self, tasks: Sequence[str], num_classes: int, mode: str, group_size: int):
        if mode not in METRICS_MODES:
            raise ValueError(f"metrics_mode must be one of {list(METRICS_MODES)}, got {mode!r}")
        self.tasks = tuple(tasks)
        self.mode = mode
        self.group_size = group_size
        reduction = "batch_mean" if mode == "per_batch" else "pooled"
        self.acc: dict[str, Any] = {}
        for t in self.tasks:
            if t == "segmentation":
                self.acc[t] = ConfusionMatrix(num_classes)
            elif t == "depth":
                self.acc[t] = DepthErrors(reduction)
            elif t == "normal":
                self.acc[t] = NormalErrors(reduction)
            else:
                raise ValueError(f"no metrics for task {t!r}")
        self._buffer: dict[str, list[tuple[Tensor, Tensor]]] = {t: [] for t in self.tasks}
        self._buffered = 0
        self._last_index = -1

    def update(self, forward: Forward, batch: Mapping[str, Tensor]) -> None:
        preds = forward.outputs
        if "segmentation" in self.tasks:
            self.acc["segmentation"].update(preds["segmentation"], batch["segmentation"])
        dense = [t for t in self.tasks if t != "segmentation"]
        if self.mode == "pooled":
            for t in dense:
                self.acc[t].update(preds[t], batch[t])
            return
        idx = batch["index"].reshape(-1).tolist()
        if any(b <= a for a, b in zip([self._last_index] + idx, idx)):
            raise ValueError(
                "metrics_mode='per_batch' needs the test samples in dataset order (an "
                "unshuffled loader in one process); use metrics_mode='pooled' otherwise"
            )
        self._last_index = idx[-1]
        for t in dense:
            self._buffer[t].append((preds[t].detach(), batch[t]))
        self._buffered += len(idx)
        while self._buffered >= self.group_size:
            self._flush(self.acc, self.group_size)

    def _flush(self, acc: dict[str, Any], n: int) -> None:
        for t, items in self._buffer.items():
            if not items:
                continue
            p = torch.cat([a for a, _ in items])
            g = torch.cat([b for _, b in items])
            acc[t].update(p[:n], g[:n])
            self._buffer[t] = [(p[n:], g[n:])] if p.shape[0] > n else []
        self._buffered -= n

    def all_reduce_(self) -> DenseEvaluator:
        """Sum the accumulators over torch.distributed ranks (``pooled`` mode only)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            if self.mode == "per_batch":
                raise ValueError(
                    "metrics_mode='per_batch' cannot be combined across ranks; evaluate on "
                    "one process or use metrics_mode='pooled'"
                )
            for a in self.acc.values():
                a.all_reduce_()
        return self

    def compute(self) -> dict[str, dict[str, float]]:
        acc = self.acc
        if self._buffered:  # the final, shorter group — on copies, so compute() is repeatable
            acc = copy.deepcopy(self.acc)
            saved = {t: list(v) for t, v in self._buffer.items()}, self._buffered
            self._flush(acc, self._buffered)
            self._buffer, self._buffered = saved
        return {t: dict(acc[t].compute()) for t in self.tasks}


# ---------------------------------------------------------------------------------------
# the benchmark base
# ---------------------------------------------------------------------------------------


def _resnet_encoder(layers: Sequence[int], width: float,
                    pretrained_path: str | os.PathLike | None) -> DilatedResNet:
    enc = DilatedResNet(layers, width)
    if pretrained_path is not None:
        load_resnet50_weights(enc, pretrained_path)
    return enc


def _resnet_stages(enc: DilatedResNet) -> list[torch.nn.Module]:
    stem = torch.nn.Sequential(enc.conv1, enc.bn1, enc.relu, enc.maxpool)
    return [stem, enc.layer1, enc.layer2, enc.layer3, enc.layer4]


def _upsampled(outs: dict[str, Tensor], rep: Tensor | None, x: Tensor,
               task: str | None) -> tuple[dict[str, Tensor], Tensor | None]:
    """ResNetASPP's outputs: bilinear upsampling to the input size, unit normals."""
    preds = {}
    for t, out in outs.items():
        out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=True)
        preds[t] = F.normalize(out, p=2, dim=1) if t == "normal" else out
    return preds, rep


@dataclass(frozen=True)
class ModelProtocol:
    """Everything that follows from the model choice: training protocol, reference
    augmentation and metric mode, and the STL reference measured under it."""

    protocol: Protocol
    augment: bool
    metrics_mode: str
    stl_reference: Mapping[str, Mapping[str, float]] | None
    stl_source: str
    needs_pretrained: bool = False


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


class DenseBenchmark(Benchmark):
    """Base of the MTAN-format benchmarks; subclasses set the class attributes below."""

    task_channels: ClassVar[Mapping[str, int]] = {}
    standard_sizes: ClassVar[tuple[tuple[int, int], ...]] = ()
    #: size the STL references were measured at
    reference_size: ClassVar[tuple[int, int]] = (0, 0)
    #: the folder of the test split (MTAN's release calls it ``val``)
    test_folder: ClassVar[str] = "val"
    protocols: ClassVar[Mapping[str, ModelProtocol]] = {}
    #: the reference's test batch size for ``metrics_mode='per_batch'`` (per model)
    per_batch_group: ClassVar[Mapping[str, int]] = {}

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        *,
        model: str = "segnet_mtan",
        attention_shared: bool = False,
        metrics_mode: str | None = None,
        pretrained_path: str | os.PathLike | None = None,
        augment: bool | None = None,
        width: float = 1.0,
        val_size: int = 0,
        num_classes: int | None = None,
    ):
        if model not in MODELS:
            raise ValueError(f"model must be one of {list(MODELS)}, got {model!r}")
        _check_bool("attention_shared", attention_shared)
        if attention_shared and model != "segnet_mtan":
            raise ValueError("attention_shared applies to model='segnet_mtan' only")
        if pretrained_path is not None and model != "resnet50_aspp":
            raise ValueError("pretrained_path applies to model='resnet50_aspp' only")
        ref = self.protocols[model]
        if metrics_mode is None:
            metrics_mode = ref.metrics_mode
        if metrics_mode not in METRICS_MODES:
            raise ValueError(f"metrics_mode must be one of {list(METRICS_MODES)}, got {metrics_mode!r}")
        if augment is None:
            augment = ref.augment
        _check_bool("augment", augment)
        if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 4:
            raise ValueError(f"width must be a number in (0, 4], got {width!r}")
        if isinstance(val_size, bool) or not isinstance(val_size, int) or val_size < 0:
            raise ValueError(f"val_size must be a non-negative integer, got {val_size!r}")
        if pretrained_path is not None and not os.path.isfile(pretrained_path):
            raise ValueError(
                f"pretrained_path {os.fspath(pretrained_path)!r} is not a file; give a local "
                "torchvision resnet50 state-dict file (weights are never downloaded)"
            )
        self.num_classes = self.task_channels["segmentation"] if num_classes is None else num_classes
        self.model_name = model
        self.attention_shared = attention_shared
        self.metrics_mode = metrics_mode
        self.pretrained_path = None if pretrained_path is None else os.fspath(pretrained_path)
        self.augment = augment
        self.width = float(width)
        self.val_size = val_size
        self.protocol = ref.protocol
        self.splits = ("train", "val", "test") if val_size else ("train", "test")
        self.root = None if root is None else Path(root).expanduser()
        self._scans: dict[str, SplitIndex] = {}
        self._split_indices: dict[str, list[int]] = {}
        if self.root is not None:
            self._scan_all()
        self._set_reference(ref)

    # -- dataset description (subclass hooks) -------------------------------------------
    def modalities(self) -> tuple[Modality, ...]:
        raise NotImplementedError

    def layout(self) -> str:
        raise NotImplementedError

    # -- layout -------------------------------------------------------------------------
    def _scan_all(self) -> None:
        assert self.root is not None
        if not self.root.is_dir():
            raise ValueError(f"{self.name} root {self.root} is not a directory; expected layout:\n{self.layout()}")
        mods = self.modalities()
        train = scan_split(self.root / "train", mods, self.layout())
        test = scan_split(self.root / self.test_folder, mods, self.layout())
        if train.size != test.size:
            raise ValueError(
                f"{train.path} holds {train.size} arrays but {test.path} holds {test.size}; "
                "both splits must have one resolution"
            )
        if self.val_size >= train.count:
            raise ValueError(
                f"val_size={self.val_size} leaves no training images ({train.count} in {train.path})"
            )
        perm = torch.randperm(train.count, generator=torch.Generator().manual_seed(_VAL_SEED))
        held = sorted(perm[: self.val_size].tolist())
        held_set = set(held)
        self._scans = {"train": train, "val": train, "test": test}
        self._split_indices = {
            "train": [i for i in range(train.count) if i not in held_set],
            "val": held,
            "test": list(range(test.count)),
        }
        self.image_size = train.size
        if self.model_name == "segnet_mtan" and (train.size[0] % 32 or train.size[1] % 32):
            raise ValueError(
                f"model='segnet_mtan' needs H and W divisible by 32, but {self.root} holds "
                f"{train.size[0]} × {train.size[1]} images"
            )
        if train.size not in self.standard_sizes:
            log.warning(
                "%s: images are %d x %d, not the published %s; the STL reference is dropped",
                self.name, *train.size, " or ".join(f"{h} x {w}" for h, w in self.standard_sizes),
            )

    def split_indices(self, split: str) -> list[int]:
        """File indices (``<i>.npy``) that make up ``split`` (train minus the held-out val)."""
        self._check_split(split)
        return list(self._split_indices[split])

    def _check_split(self, split: str) -> None:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be one of {list(self.splits)}, got {split!r}")
        if split == "val" and not self.val_size:
            raise ValueError(
                f"{self.name} has no validation split in the reference protocol (its "
                f"'{self.test_folder}/' folder is the test set); pass val_size > 0 to hold "
                "out that many training images as one"
            )
        if self.root is None:
            raise ValueError(
                f"{self.name} needs root=<directory>; expected layout:\n{self.layout()}"
            )

    # -- references ---------------------------------------------------------------------
    def _set_reference(self, ref: ModelProtocol) -> None:
        reasons = []
        if self.width != 1.0:
            reasons.append(f"width={self.width} is not the published model")
        if ref.needs_pretrained and self.pretrained_path is None:
            reasons.append("the reference encoder is ImageNet-pretrained (no pretrained_path)")
        if self.metrics_mode != ref.metrics_mode:
            reasons.append(f"it was measured with metrics_mode={ref.metrics_mode!r}")
        if self.num_classes != self.task_channels["segmentation"]:
            reasons.append(f"it is for {self.task_channels['segmentation']} classes")
        size = getattr(self, "image_size", None)
        if size is not None and size != self.reference_size:
            reasons.append(f"it was measured at {self.reference_size[0]} x {self.reference_size[1]}")
        if reasons or ref.stl_reference is None:
            self.stl_reference = None
            self.stl_reference_source = "none: " + "; ".join(reasons or ["not published"])
        else:
            self.stl_reference = ref.stl_reference
            self.stl_reference_source = ref.stl_source

    # -- the contract -------------------------------------------------------------------
    def build_model(self, **model_options: Any) -> MTLModel:
        """The benchmark's model; ``width``, ``attention_shared`` and ``pretrained_path`` may
        be overridden here (validated as in the constructor). With ``model='resnet50_aspp'``,
        ``arch=<name>`` (and its options) builds any of LibMTL's architectures on the same
        encoder and heads (docs/architectures.md)."""
        arch, arch_opts, model_options = architectures.split_options(model_options)
        unknown = sorted(set(model_options) - {"width", "attention_shared", "pretrained_path"})
        if unknown:
            raise ValueError(
                f"unknown model option(s) {unknown}; valid: width, attention_shared, "
                f"pretrained_path, arch, {', '.join(sorted(architectures.OPTION_NAMES))}"
            )
        width = model_options.get("width", self.width)
        channels = dict(self.task_channels, segmentation=self.num_classes)
        if self.model_name == "segnet_mtan":
            if arch is not None or arch_opts:
                raise ValueError(
                    "model='segnet_mtan' is the MTAN paper's own SegNet architecture and takes no "
                    f"arch option; architectures ({', '.join(architectures.available())}) apply "
                    "to the ResNet encoder: pass model='resnet50_aspp' as a benchmark option"
                )
            if model_options.get("pretrained_path") is not None:
                raise ValueError("pretrained_path applies to model='resnet50_aspp' only")
            return SegNetMTAN(
                channels,
                attention_shared=model_options.get("attention_shared", self.attention_shared),
                width=width,
            )
        if model_options.get("attention_shared"):
            raise ValueError("attention_shared applies to model='segnet_mtan' only")
        pretrained = model_options.get("pretrained_path", self.pretrained_path)
        if arch in (None, "hps") and not arch_opts:
            return ResNetASPP(channels, width=width, pretrained_path=pretrained)
        spec = self.architecture_spec(width=width, pretrained_path=pretrained)
        return architectures.build(arch or "hps", spec, **arch_opts)

    def architecture_spec(
        self,
        width: float | None = None,
        pretrained_path: str | os.PathLike | None = None,
        layers: Sequence[int] = RESNET50_LAYERS,
    ) -> architectures.ArchSpec:
        """The ResNet-50-dilated + ASPP model as parts: :class:`DilatedResNet` (stages:
        stem, layer1 … layer4; it is MTAN's ResNet, with no tail), one DeepLab head per
        task, upsampling (and normal normalisation) as :class:`ResNetASPP`; the input shape
        is the data's (the published size without a root). ``layers`` only for tests."""
        if self.model_name != "resnet50_aspp":
            raise ValueError("architectures apply to model='resnet50_aspp' only")
        width = self.width if width is None else width
        if not (isinstance(width, (int, float)) and 0 < width <= 4):
            raise ValueError(f"width must be in (0, 4], got {width!r}")
        if pretrained_path is not None and (width != 1 or tuple(layers) != RESNET50_LAYERS):
            raise ValueError("pretrained_path needs the full ResNet-50 (width=1)")
        channels = dict(self.task_channels, segmentation=self.num_classes)
        rep_channels = max(1, round(512 * width)) * 4  # DilatedResNet.out_channels
        head_channels = max(1, round(256 * width))
        size = getattr(self, "image_size", None) or self.reference_size
        return architectures.ArchSpec(
            benchmark=self.name, tasks=self.tasks,
            encoder=functools.partial(_resnet_encoder, tuple(layers), width, pretrained_path),
            head=lambda t: DeepLabHead(rep_channels, channels[t], head_channels),
            collate=_upsampled, input_shape=(3, *size), stages=_resnet_stages,
            resnet=lambda enc: (enc, torch.nn.Identity()),
        )  # fmt: skip

    def dataset(self, split: str, *, seed: int = 0) -> DenseNpyDataset:
        self._check_split(split)
        return DenseNpyDataset(
            self._scans[split], self.modalities(), self._split_indices[split], self.num_classes,
            augment=self.augment and split == "train", seed=seed,
        )

    def make_loader(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> EpochDataLoader:
        """Batches of ``split`` for one rank (:mod:`envs._sampling`: ``batch_size`` is per
        rank, the global batch is ``batch_size · world_size``; distributed training needs
        ``drop_last=True`` for equal per-rank batches). Each iteration is the next pass
        (new order and augmentation draws); ``loader.set_epoch(e)`` selects pass ``e``."""
        ds = self.dataset(split, seed=seed)
        workers = worker_options(num_workers, pin_memory)
        inner = ShardedBatchSampler(
            len(ds), batch_size, shuffle=shuffle, seed=seed, rank=rank,
            world_size=world_size, drop_last=drop_last,
        )
        return EpochDataLoader(ds, batch_sampler=_PassKeyedSampler(inner), **workers)

    def forward_losses(self, model: MTLModel, batch: Mapping[str, Tensor]) -> Forward:
        preds, rep = model(batch["image"])
        losses = torch.stack([LOSSES[t](preds[t], batch[t]) for t in self.tasks])
        return Forward(losses=losses, rep=rep, outputs=preds)

    def new_evaluator(self) -> DenseEvaluator:
        return DenseEvaluator(
            self.tasks, self.num_classes, self.metrics_mode, self.per_batch_group[self.model_name]
        )

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(
            model=self.model_name,
            attention_shared=self.attention_shared,
            metrics_mode=self.metrics_mode,
            augment=self.augment,
            width=self.width,
            val_size=self.val_size,
            num_classes=self.num_classes,
            pretrained=self.pretrained_path is not None,
            stl_reference_source=self.stl_reference_source,
        )
        return d
