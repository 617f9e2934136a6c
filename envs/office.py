"""Office-31 and Office-Home — multi-input image classification, one task per domain.

Saenko et al., "Adapting Visual Category Models to New Domains", ECCV 2010 (Office-31:
amazon, dslr, webcam; 31 classes); Venkateswara et al., "Deep Hashing Network for
Unsupervised Domain Adaptation", CVPR 2017, https://arxiv.org/abs/1706.07522 (Office-Home:
Art, Clipart, Product, Real_World; 65 classes). As MTL benchmarks: LibMTL (Lin & Zhang,
https://github.com/median-research-group/LibMTL) and the DB-MTL / Rep-MTL tables.

Reference code followed: LibMTL ``examples/office/{main,create_dataset}.py`` and
``LibMTL/trainer.py`` (docs/benchmarks.md §Office-31 and Office-Home).

Multi-input: each task is a domain with its own images, so a training batch is
``{domain: (images, labels)}`` and each domain's images go through the shared encoder in
their own forward pass (LibMTL runs ``model(input, task)`` per task, so BatchNorm sees one
domain at a time; so do we). There is no single shared representation, so
representation-level methods are rejected (``multi_input = True``, ``Forward.rep = None``).

Data (read from ``root``, never downloaded):
``<root>/<domain>/images/<class>/*.jpg`` (Office-31) or ``<root>/<Domain>/<Class>/*.jpg``
(Office-Home; the ``Real World`` folder of the original release may keep its space, or be
renamed ``Real_World`` as LibMTL does).

Splits — two sources, recorded in ``describe()["split_source"]``:

* ``files``: LibMTL's lists, if ``<split_dir>/<domain>_{train,val,test}.txt`` exist for every
  domain (``split_dir`` defaults to ``root``; copy LibMTL's
  ``examples/office/data_txt/<office-31|office-home>/*.txt`` there to reproduce its splits).
  Each line is ``relative/path label`` relative to ``root`` (e.g.
  ``amazon/images/back_pack/frame_0065.jpg 0``); labels are taken from the file.
* ``generated`` (no split files): per domain and class, the sorted image files are permuted
  with NumPy's ``default_rng([split_seed, domain index, class index])`` and split
  ⌊0.6n⌋ / ⌊0.2n⌋ / rest into train / val / test; labels are class indices in sorted
  class-name order. This is LibMTL's "random 60/20/20" rule as its files' counts reveal
  (per class floor(0.6n)/floor(0.2n)/remainder reproduces e.g. dslr's 287/89/122 exactly),
  but not its random draw. ``export_splits(dir)`` writes the lists in LibMTL's format.

Input: ``Resize((224, 224))`` (no crop/flip), ``ToTensor``, ImageNet mean/std.

Model (LibMTL HPS): shared ResNet-18 trunk (torchvision layout; LibMTL's ``resnet18`` is
the same network) → global average pool → Linear(512, 512) [init N(0, 0.005), bias 0.1] +
BN1d + ReLU + Dropout(0.5); per domain a head Linear(512, C). ``build_model(width=w)``
scales the channels by w/64 (64 = the reference; smaller only for tests);
``build_model(arch=...)`` gives LibMTL's other architectures on the same encoder and heads
(hps, mmoe, mtan, cgc, dselect_k; not the single-input-only cross_stitch, ple, ltb; see
docs/architectures.md). LibMTL starts
from ImageNet weights; here they are loaded ONLY from a local torchvision ``resnet18``
state-dict file (``build_model(pretrained_path=...)``) and a warning is logged when the
trunk is randomly initialised (published numbers and STL references assume pretraining).

Loss: cross-entropy per domain (batch mean). Metric: accuracy (↑, a fraction).

Epochs (LibMTL ``Trainer.train``): one epoch is ``max_t ⌊n_t / B⌋`` steps (⌊n_t / (B·W)⌋
with W ranks, each rank taking its block of B of every global batch, as in
:mod:`envs._sampling`); every step draws one batch from every domain. A domain whose
loader runs out is restarted with a fresh shuffle, and its position carries over into the
next epoch (LibMTL keeps the iterators across epochs). Incomplete batches are dropped in
training (LibMTL's ``drop_last=True``, whatever ``drop_last`` says). Pass p of domain d uses
the permutation seeded from (seed, d, p), so epoch e is reproducible on its own
(``loader.set_epoch(e)``). Evaluation (``shuffle=False``) visits every image of every domain
once; its batches hold the domains that still have images, and ``forward_losses`` reports
NaN losses for the absent ones (average evaluation losses per task over the batches where
they are finite).

Protocol (LibMTL ``examples/office``): Adam lr 1e-4, weight decay 1e-5, batch 64 per
domain, 100 epochs, no scheduler; test accuracy at the epoch with the best validation Δp
(LibMTL measures it against epoch 0); 3 seeds. STL references: DB-MTL's ResNet-18 STL
accuracies as printed in Rep-MTL Tab. 5 (Office-31) and Tab. 3 (Office-Home).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from envs import architectures
from envs._sampling import (
    CyclingBatchSampler,
    ShardedBatchSampler,
    check_shard,
    worker_options,
)
from envs.base import Benchmark, Evaluator, Forward, Metric, MTLModel, Protocol, register
from envs.metrics import Accuracy

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TRAIN_FRACTION, VAL_FRACTION = 0.6, 0.2

Item = tuple[str, int]  # (path relative to root, label)


# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------


class OfficeDataset(Dataset):
    """(image [3, S, S] ImageNet-normalised, label) pairs of one domain and split."""

    def __init__(self, root: Path, items: list[Item], image_size: int):
        from torchvision import transforms

        self.root, self.items = root, items
        self.transform = transforms.Compose([
            transforms.Resize((image_size, image_size)),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        path, label = self.items[i]
        with Image.open(self.root / path) as img:
            return self.transform(img.convert("RGB")), label


class OfficeLoader:
    """Joint iteration over the per-domain loaders (see the module docstring).

    Training (``shuffle=True``): ``len`` = max over domains of complete global batches per
    pass; every batch holds every domain. Evaluation: every image once, batches hold the
    domains that still have images. Each ``iter()`` is the next epoch; ``set_epoch`` sets it.
    """

    def __init__(self, datasets: Mapping[str, OfficeDataset], batch_size: int, *, shuffle: bool,
                 seed: int, rank: int, world_size: int, drop_last: bool, num_workers: int,
                 pin_memory: bool = False):
        check_shard(batch_size, rank, world_size)
        self.datasets = dict(datasets)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.workers = worker_options(num_workers, pin_memory)
        self.epoch = 0
        if shuffle:
            per_pass = {}
            for d, ds in self.datasets.items():
                per_pass[d] = len(ds) // (batch_size * world_size)
                if per_pass[d] == 0:
                    raise ValueError(
                        f"domain {d!r} has {len(ds)} training images, fewer than one global batch "
                        f"(batch_size {batch_size} x world_size {world_size}); lower the batch size"
                    )
            self.steps = max(per_pass.values())
        else:
            self._eval_samplers = {
                d: ShardedBatchSampler(len(ds), batch_size, rank=rank, world_size=world_size,
                                       drop_last=drop_last)
                for d, ds in self.datasets.items()
            }
            self.steps = max(len(s) for s in self._eval_samplers.values())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps

    def _loader(self, ds: OfficeDataset, sampler) -> DataLoader:
        return DataLoader(ds, batch_sampler=sampler, **self.workers)

    def __iter__(self) -> Iterator[dict[str, tuple[Tensor, Tensor]]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        if self.shuffle:
            its = {
                d: iter(self._loader(ds, CyclingBatchSampler(
                    len(ds), self.batch_size, start=epoch * self.steps, count=self.steps,
                    seed=self.seed, stream=k, rank=self.rank, world_size=self.world_size)))
                for k, (d, ds) in enumerate(self.datasets.items())
            }
            for _ in range(self.steps):
                yield {d: next(it) for d, it in its.items()}
            return
        its = {d: iter(self._loader(ds, self._eval_samplers[d])) for d, ds in self.datasets.items()}
        for _ in range(self.steps):
            batch = {}
            for d, it in its.items():
                b = next(it, None)
                if b is not None:
                    batch[d] = b
            yield batch


def _image_files(folder: Path) -> list[str]:
    return sorted(
        f.name for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
    )


# ---------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------


class ResNet18Trunk(nn.Module):
    """torchvision's ResNet-18 up to the global average pool, with a channel ``width``
    (64 = ResNet-18). At width 64 its parameter names and shapes are torchvision's
    ``resnet18`` without ``fc`` (tested), so torchvision checkpoints load as they are; the
    init is torchvision's (Kaiming-normal fan-out convs, BN weight 1 / bias 0)."""

    def __init__(self, width: int = 64):
        super().__init__()
        from torchvision.models.resnet import BasicBlock, conv1x1

        self.out_features = 8 * width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = width
        for i, (planes, stride) in enumerate(((width, 1), (2 * width, 2), (4 * width, 2),
                                              (8 * width, 2)), 1):
            down = None
            if stride != 1 or inplanes != planes:
                down = nn.Sequential(conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes))
            layer = nn.Sequential(BasicBlock(inplanes, planes, stride, down),
                                  BasicBlock(planes, planes))
            setattr(self, f"layer{i}", layer)
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def load_resnet18_trunk(trunk: ResNet18Trunk, path: str | os.PathLike) -> None:
    """Load a local torchvision ResNet-18 checkpoint (``fc.*`` ignored). Never downloads."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"pretrained_path {path!r} is not a file; give a local torchvision resnet18 state "
            "dict (e.g. resnet18-f37072fd.pth); weights are never downloaded"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is reported the same way
        raise ValueError(f"could not read pretrained weights from {path!r}: {e}") from e
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path!r} does not hold a state dict (got {type(obj).__name__})")
    sd = {k.removeprefix("module."): v for k, v in obj.items()}
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    own = trunk.state_dict()
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    wrong = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path!r} is not a torchvision ResNet-18 state dict: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}"
        )
    trunk.load_state_dict(sd, strict=True)
    log.info("Office ResNet-18: loaded trunk weights from %s", path)


class OfficeEncoder(nn.Module):
    """LibMTL's Office encoder: ResNet-18 trunk, average pool, hidden Linear + BN + ReLU +
    Dropout(0.5) (512-d at the reference width 64)."""

    def __init__(self, width: int = 64, pretrained_path: str | os.PathLike | None = None):
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive integer (64 = ResNet-18), got {width!r}")
        self.resnet = ResNet18Trunk(width)
        if pretrained_path is not None:
            if width != 64:
                raise ValueError(
                    f"pretrained_path needs the full ResNet-18 (width=64), got {width}"
                )
            load_resnet18_trunk(self.resnet, pretrained_path)
        else:
            log.warning(
                "Office ResNet-18 is randomly initialised (no pretrained_path); LibMTL and the "
                "published Office numbers/STL references use ImageNet weights — pass a local "
                "torchvision resnet18 .pth file"
            )
        d = self.resnet.out_features
        self.hidden = nn.Sequential(nn.Linear(d, d), nn.BatchNorm1d(d), nn.ReLU(), nn.Dropout(0.5))
        nn.init.normal_(self.hidden[0].weight, 0.0, 0.005)  # LibMTL examples/office/main.py
        nn.init.constant_(self.hidden[0].bias, 0.1)
        self.out_features = d

    def forward(self, x: Tensor) -> Tensor:
        return self.hidden(self.resnet(x))


def _office_resnet(encoder: OfficeEncoder) -> tuple[nn.Module, nn.Module]:
    """(the ResNet-18 trunk, the shared tail: average pool, flatten, hidden layer)."""
    tail = nn.Sequential(encoder.resnet.avgpool, nn.Flatten(), encoder.hidden)
    return encoder.resnet, tail


class OfficeNet(MTLModel):
    """Shared :class:`OfficeEncoder` + one Linear(512, C) head per domain."""

    features = frozenset()  # multi-input: no single shared representation

    def __init__(self, tasks: tuple[str, ...], num_classes: int, width: int = 64,
                 pretrained_path: str | os.PathLike | None = None):
        super().__init__()
        self.tasks = tuple(tasks)
        self.encoder = OfficeEncoder(width, pretrained_path)
        d = self.encoder.out_features
        self.heads = nn.ModuleDict({t: nn.Linear(d, num_classes) for t in self.tasks})

    def forward(self, x: Tensor, task: str) -> Tensor:
        """Logits [B, C] of ``task``'s head for that domain's images."""
        return self.heads[task](self.encoder(x))


# ---------------------------------------------------------------------------------------
# benchmark
# ---------------------------------------------------------------------------------------


class OfficeEvaluator(Evaluator):
    def __init__(self, tasks: tuple[str, ...]):
        self.tasks = tasks
        self.acc = {t: Accuracy() for t in tasks}

    def update(self, forward: Forward, batch: Any) -> None:
        for t, logits in forward.outputs["logits"].items():
            self.acc[t].update(logits.detach(), batch[t][1])

    def all_reduce_(self) -> OfficeEvaluator:
        """Sum the states over torch.distributed ranks (each rank evaluated its shard)."""
        for a in self.acc.values():
            a.all_reduce_()
        return self

    def compute(self) -> dict[str, dict[str, float]]:
        return {t: {"acc": self.acc[t].compute()} for t in self.tasks}


class _Office(Benchmark):
    """Shared code of :class:`Office31` and :class:`OfficeHome` (see the module docstring)."""

    multi_input = True
    domains: ClassVar[tuple[str, ...]] = ()
    #: domain → folder names accepted under root (first existing wins)
    folders: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    images_subdir: ClassVar[str] = ""
    num_classes: ClassVar[int] = 0
    options: Mapping[str, Any] = {"image_size": 224, "split_dir": None, "split_seed": 0}
    protocol = Protocol(
        optimizer="adam", lr=1e-4, weight_decay=1e-5, batch_size=64, epochs=100,
        lr_schedule="none", selection="best_val", average_last=1,
        source="LibMTL examples/office/main.py + LibMTL/config.py defaults (Adam lr 1e-4, "
               "wd 1e-5, batch 64 per domain, 100 epochs, no scheduler; test accuracy at the "
               "epoch of best validation Δp vs epoch 0)",
    )

    def __init__(self, root: str | os.PathLike | None = None, image_size: int = 224,
                 split_dir: str | os.PathLike | None = None, split_seed: int = 0):
        if root is None:
            raise ValueError(f"{self.name} needs root=<folder>; expected {self._layout_help()}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16:
            raise ValueError(
                f"image_size must be an integer >= 16 (LibMTL: 224), got {image_size!r}"
            )
        if isinstance(split_seed, bool) or not isinstance(split_seed, int) or split_seed < 0:
            raise ValueError(f"split_seed must be a non-negative integer, got {split_seed!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"{self.name} root {str(self.root)!r} is not a directory; expected "
                f"{self._layout_help()}"
            )
        self.image_size, self.split_seed = image_size, split_seed
        self.split_dir = Path(split_dir) if split_dir is not None else self.root
        self.tasks = self.domains
        self.metrics = {t: (Metric("acc", higher_is_better=True),) for t in self.tasks}
        wanted = {(d, s): self.split_dir / f"{d}_{s}.txt" for d in self.domains for s in SPLITS}
        present = {k for k, p in wanted.items() if p.is_file()}
        if present and len(present) < len(wanted):
            missing = [str(wanted[k]) for k in wanted if k not in present]
            raise FileNotFoundError(
                f"{self.name}: some split files exist in {str(self.split_dir)!r} but "
                f"{len(missing)} are missing (e.g. {missing[:3]}); give all "
                "<domain>_{train,val,test}.txt or none (then splits are generated)"
            )
        if present:
            self.items = {
                d: {s: self._read_split(wanted[d, s]) for s in SPLITS} for d in self.domains
            }
            self.split_source = f"files: {self.split_dir}/<domain>_<split>.txt"
            self._check_disjoint()
        else:
            self._classes: list[str] | None = None
            self.items = {d: self._generate(k, d) for k, d in enumerate(self.domains)}
            self.split_source = (
                f"generated: per class sorted files, default_rng([{split_seed}, domain, class]) "
                "permutation, floor(0.6n)/floor(0.2n)/rest"
            )

    # -- layout ---------------------------------------------------------------------------

    @classmethod
    def _layout_help(cls) -> str:
        sub = f"/{cls.images_subdir}" if cls.images_subdir else ""
        return (f"<root>/<domain>{sub}/<class>/*.jpg for domains {list(cls.domains)} with "
                f"{cls.num_classes} class folders each")

    def _domain_dir(self, domain: str) -> Path:
        for name in self.folders.get(domain, (domain,)):
            path = self.root / name
            if path.is_dir():
                return path / self.images_subdir if self.images_subdir else path
        raise FileNotFoundError(
            f"{self.name}: domain folder for {domain!r} not found under {str(self.root)!r} "
            f"(tried {list(self.folders.get(domain, (domain,)))}); expected {self._layout_help()}"
        )

    def _generate(self, k: int, domain: str) -> dict[str, list[Item]]:
        folder = self._domain_dir(domain)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{self.name}: {str(folder)!r} is missing; expected {self._layout_help()}"
            )
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if len(classes) != self.num_classes:
            raise ValueError(
                f"{self.name}: {str(folder)!r} has {len(classes)} class folders, expected "
                f"{self.num_classes}; expected {self._layout_help()}"
            )
        if self._classes is None:
            self._classes = classes
        elif classes != self._classes:
            diff = sorted(set(classes) ^ set(self._classes))
            raise ValueError(
                f"{self.name}: class folders of {domain!r} differ from those of "
                f"{self.domains[0]!r}: {diff[:5]}"
            )
        out: dict[str, list[Item]] = {s: [] for s in SPLITS}
        for c, cls in enumerate(classes):
            files = _image_files(folder / cls)
            if not files:
                raise ValueError(f"{self.name}: class folder {str(folder / cls)!r} holds no images")
            order = np.random.default_rng([self.split_seed, k, c]).permutation(len(files))
            n_tr, n_va = int(TRAIN_FRACTION * len(files)), int(VAL_FRACTION * len(files))
            rel = (folder / cls).relative_to(self.root).as_posix()
            for j, i in enumerate(order):
                split = "train" if j < n_tr else "val" if j < n_tr + n_va else "test"
                out[split].append((f"{rel}/{files[i]}", c))
        return out

    def _read_split(self, path: Path) -> list[Item]:
        items: list[Item] = []
        label_of: dict[str, int] = {}
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.rsplit(maxsplit=1)  # paths may contain spaces ("Real World")
            try:
                rel, label = parts[0].strip(), int(parts[1])
            except (IndexError, ValueError):
                raise ValueError(
                    f"{path}: line {i} must be '<path relative to root> <label>', got {line[:80]!r}"
                ) from None
            if not 0 <= label < self.num_classes:
                raise ValueError(
                    f"{path}: line {i}: label {label} outside [0, {self.num_classes - 1}]"
                )
            if not (self.root / rel).is_file():
                raise FileNotFoundError(
                    f"{path}: line {i}: image {str(self.root / rel)!r} does not exist; paths are "
                    f"relative to root ({self._layout_help()})"
                )
            cls_dir = rel.rsplit("/", 1)[0]
            if label_of.setdefault(cls_dir, label) != label:
                raise ValueError(
                    f"{path}: line {i}: folder {cls_dir!r} has labels {label_of[cls_dir]} "
                    f"and {label}"
                )
            items.append((rel, label))
        if not items:
            raise ValueError(f"{path} lists no images")
        return items

    def _check_disjoint(self) -> None:
        for d, splits in self.items.items():
            seen: dict[str, str] = {}
            for s, items in splits.items():
                for rel, _ in items:
                    if seen.setdefault(rel, s) != s:
                        raise ValueError(
                            f"{self.name}: {rel!r} is in both the {seen[rel]} and {s} split "
                            f"of {d!r}"
                        )

    # -- contract -------------------------------------------------------------------------

    def dataset(self, split: str, domain: str) -> OfficeDataset:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        return OfficeDataset(self.root, self.items[domain][split], self.image_size)

    def build_model(self, width: int = 64, pretrained_path: str | os.PathLike | None = None,
                    arch: str | None = None, **arch_options: Any) -> MTLModel:
        """ResNet-18 HPS; ``width`` < 64 shrinks every channel count (tests only).
        ``arch`` (hps, mmoe, mtan, cgc, dselect_k) recombines the same encoder and heads
        into another architecture, every ResNet copy loaded from ``pretrained_path`` as
        LibMTL loads each copy; cross_stitch, ple and ltb are refused (multi-input)."""
        architectures.check_option_names(self.name, arch_options, ["width", "pretrained_path"])
        if arch in (None, "hps") and not arch_options:
            return OfficeNet(self.tasks, self.num_classes, width=width,
                             pretrained_path=pretrained_path)
        spec = self.architecture_spec(width=width, pretrained_path=pretrained_path)
        return architectures.build(arch or "hps", spec, **arch_options)

    def architecture_spec(self, width: int = 64,
                          pretrained_path: str | os.PathLike | None = None
                          ) -> architectures.ArchSpec:
        """The Office model as parts: :class:`OfficeEncoder` (its ResNet-18 trunk, then the
        pool + hidden layer as MTAN's shared tail), Linear(8·width, C) heads, multi-input
        3×S×S images."""
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive integer (64 = ResNet-18), got {width!r}")
        d, classes = 8 * width, self.num_classes
        return architectures.ArchSpec(
            benchmark=self.name, tasks=self.tasks,
            encoder=functools.partial(OfficeEncoder, width, pretrained_path),
            head=lambda task: nn.Linear(d, classes),
            input_shape=(3, self.image_size, self.image_size), multi_input=True,
            resnet=_office_resnet,
        )  # fmt: skip

    def make_loader(self, split: str, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                    rank: int = 0, world_size: int = 1, drop_last: bool = False,
                    num_workers: int = 0, pin_memory: bool = False) -> OfficeLoader:
        """``{domain: (images, labels)}`` batches, ``batch_size`` per domain and rank; see
        :class:`OfficeLoader` (training iteration when ``shuffle``; ``drop_last`` then has
        no effect: training always drops incomplete batches, as LibMTL)."""
        datasets = {d: self.dataset(split, d) for d in self.domains}
        return OfficeLoader(datasets, batch_size, shuffle=shuffle, seed=seed, rank=rank,
                            world_size=world_size, drop_last=drop_last, num_workers=num_workers,
                            pin_memory=pin_memory)

    def forward_losses(self, model: MTLModel, batch: Any) -> Forward:
        if not isinstance(batch, Mapping) or not set(batch) <= set(self.tasks) or not batch:
            raise ValueError(
                f"{self.name} batches are {{domain: (images, labels)}} for domains {self.tasks}"
            )
        losses, logits = [], {}
        nan = None
        for t in self.tasks:
            if t not in batch:
                if nan is None:
                    ref = next(iter(batch.values()))[0]
                    nan = torch.full((), float("nan"), device=ref.device)
                losses.append(nan)
                continue
            x, y = batch[t]
            logits[t] = model(x, t)
            losses.append(F.cross_entropy(logits[t], y))
        return Forward(losses=torch.stack(losses), rep=None, outputs={"logits": logits})

    def new_evaluator(self) -> OfficeEvaluator:
        return OfficeEvaluator(self.tasks)

    def split_fingerprint(self) -> str:
        """sha256 of every (domain, split, path, label), to tell split versions apart."""
        h = hashlib.sha256()
        for d in self.domains:
            for s in SPLITS:
                for rel, y in self.items[d][s]:
                    h.update(f"{d}\t{s}\t{rel}\t{y}\n".encode())
        return h.hexdigest()

    def export_splits(self, directory: str | os.PathLike) -> list[Path]:
        """Write the splits in LibMTL's format (``<domain>_<split>.txt``) to pin them."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for d in self.domains:
            for s in SPLITS:
                p = out / f"{d}_{s}.txt"
                p.write_text("".join(f"{rel} {y}\n" for rel, y in self.items[d][s]))
                written.append(p)
        return written

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "root": str(self.root),
            "image_size": self.image_size,
            "num_classes": self.num_classes,
            "split_source": self.split_source,
            "split_fingerprint": self.split_fingerprint(),
            "split_sizes": {d: {s: len(self.items[d][s]) for s in SPLITS} for d in self.domains},
        }


@register("office31")
class Office31(_Office):
    """Office-31: amazon / dslr / webcam, 31 classes, LibMTL protocol."""

    description = "Office-31: 3 domains x 31 classes, multi-input, ResNet-18 HPS (LibMTL protocol)"
    domains = ("amazon", "dslr", "webcam")
    images_subdir = "images"
    num_classes = 31
    stl_reference = {"amazon": {"acc": 0.8661}, "dslr": {"acc": 0.9563}, "webcam": {"acc": 0.9685}}
    stl_reference_source = (
        "DB-MTL's ResNet-18 STL accuracies (%/100) as printed in Rep-MTL Tab. 5 "
        "(docs/benchmarks.md §Single-task references); LibMTL protocol with "
        "ImageNet-pretrained ResNet-18"
    )


@register("office_home")
class OfficeHome(_Office):
    """Office-Home: Art / Clipart / Product / Real_World, 65 classes, LibMTL protocol."""

    description = (
        "Office-Home: 4 domains x 65 classes, multi-input, ResNet-18 HPS (LibMTL protocol)"
    )
    domains = ("Art", "Clipart", "Product", "Real_World")
    folders = {"Real_World": ("Real_World", "Real World")}
    num_classes = 65
    stl_reference = {
        "Art": {"acc": 0.6559}, "Clipart": {"acc": 0.7960},
        "Product": {"acc": 0.9047}, "Real_World": {"acc": 0.8000},
    }
    stl_reference_source = (
        "DB-MTL's ResNet-18 STL accuracies (%/100) as printed in Rep-MTL Tab. 3 "
        "(docs/benchmarks.md §Single-task references); LibMTL protocol with "
        "ImageNet-pretrained ResNet-18"
    )
