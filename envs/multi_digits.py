"""multi_digits — two overlaid handwritten digits, classify the left one and the right one.

The embedded default benchmark: it needs no download and no ``root``. It is built
deterministically from the 1,797 real 8×8 handwritten digits bundled with scikit-learn
(``sklearn.datasets.load_digits``, UCI "Optical Recognition of Handwritten Digits", values
0…16), in the manner of MultiMNIST (Sabour et al. 2017, as used for MTL by Sener & Koltun,
NeurIPS 2018, https://arxiv.org/abs/1810.04650): one digit in the top-left, one in the
bottom-right, overlaid on a larger canvas; task ``left`` and task ``right`` are 10-way
classification of each digit (cross-entropy, metric accuracy ↑).

Construction (all fixed by ``data_seed``):

* the base digits are split 60/20/20 into train/val/test pools (1078/359/360 images) *before*
  pairing, so no handwritten digit of the val/test sets is seen in training;
* each sample draws a left and a right base digit from its split's pool, uniformly and
  independently, and integer offsets: the left digit's top-left corner at (r, c) with
  r, c ∈ {0, 1, 2}, the right digit's at r, c ∈ {4, 5, 6}, on a 14×14 canvas. The digits
  overlap by 2–6 pixels in each direction (MultiMNIST's 28-px digits shifted by up to 8 px
  in a 36×36 canvas overlap more, but our 8×8 digits leave less room). Overlaps combine by
  the pixel-wise maximum; pixels are scaled to [0, 1], then standardised with the fixed
  constants ``PIXEL_MEAN``/``PIXEL_STD`` (as MultiMNIST loaders apply MNIST's mean/std);
* sizes ``n_train``/``n_val``/``n_test`` (default 6000/1000/2000); every split is generated
  with its own seeded RNG, so changing one size never changes another split.

Model (``build_model``): a small CNN encoder conv3×3(1→16)-ReLU-maxpool2 → conv3×3(16→32)-
ReLU-maxpool2 → flatten → Linear(288→64)-ReLU, whose 64-d output is the shared
representation; one Linear(64→10) head per task. ~25k parameters. (Sener & Koltun's MultiMNIST
model is a LeNet with 2-layer heads; this smaller one fits the 14×14 input and a CPU budget.)
``build_model(arch=...)`` recombines the same encoder and heads into another architecture:
hps (this model), cross_stitch, mmoe, cgc, ple, dselect_k or ltb (stages: the first
conv-ReLU-pool is the stem, the second and the flatten-Linear-ReLU the blocks; not mtan,
which needs a ResNet); see docs/architectures.md.

``loss_scale`` multiplies each task's loss (default (1, 1)). ``loss_scale=(1.0, 10.0)``
reproduces IMTL's experiment of multiplying one task's loss by 10 (Liu et al., ICLR 2021,
https://openreview.net/forum?id=IMPnRXEWpvr): scale-invariant methods (IMTL-G, IMTL-L, DB-MTL,
...) should be unaffected, equal weighting is not. Metrics are never scaled.

Protocol defaults (chosen here, no paper protocol exists for this data): Adam, lr 1e-3, no
weight decay, batch 64, 10 epochs (940 steps), the last epoch's test metrics reported.
Measured with :func:`fit` on one CPU thread (torch 2.15): EW takes about 5 s (up to 25 s on
a busy machine) and reaches test accuracy left/right 94.7/92.5 % (seed 0) and 94.3/93.7 %
(seed 1); chance is 10 %. With ``loss_scale=(1, 10)`` EW's left task drops to 86.7/92.0 % and
84.8/94.0 % while IMTL-G stays at 94.9/92.6 % and 94.3/94.4 % (param level; rep level alike)
— the IMTL experiment's effect.

Single-task reference: ``stl_reference`` holds accuracies measured with
:func:`measure_stl` (the same network trained on one task, i.e. ``loss_scale`` = e_t, same
protocol, seeds 0, 1, 2, mean: left 93.97 %, right 93.53 %) for the default data options,
as fractions like the evaluator's output; it is ``None`` when the data options differ from
the defaults, since the reference then no longer applies.

Loaders (:class:`TensorBatchLoader`) shard like ``torch.utils.data.DistributedSampler``
without its padding: a permutation seeded by ``seed + epoch`` (``set_epoch``; with
``drop_last`` truncated to a multiple of ``world_size``), rank r taking every
``world_size``-th index from r; then batches of ``batch_size``. So step k's batches over the
ranks are the single-process batch k of ``batch_size · world_size``, and every rank yields
the same number of batches. Without ``drop_last`` the final partial global batch is split
as evenly as the stride gives; a rank left without an example gets a one-example pad batch
that ``shard_sizes`` counts as zero (the trainer weights each rank by its real count,
``envs._sampling``), so every example counts exactly once.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import methods
from envs import architectures
from envs._sampling import shard_sizes
from envs.base import Benchmark, Evaluator, Forward, Metric, MTLModel, Protocol, register
from envs.metrics import Accuracy
from methods.base import check_int, check_range

TASKS = ("left", "right")
CANVAS = 14
DIGIT = 8
LEFT_OFFSETS = (0, 1, 2)  # top-left corner (row and column) of the left digit
RIGHT_OFFSETS = (4, 5, 6)  # ... of the right digit
BASE_FRACTIONS = (0.6, 0.2)  # train, val; test gets the rest
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
DEFAULT_SIZES = {"train": 6000, "val": 1000, "test": 2000}
DEFAULT_DATA_SEED = 0
# Input normalisation (as MultiMNIST's Normalize((0.1307,), (0.3081,))): the pixel mean and
# std of the default training split, rounded; fixed so that they never depend on options.
PIXEL_MEAN = 0.193
PIXEL_STD = 0.335

# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------


def load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: (images float64 [1797, 8, 8] in 0…16, labels int64).

    Reads ``sklearn/datasets/data/digits.csv.gz`` directly — the file ``load_digits`` parses
    — because importing ``sklearn.datasets`` costs seconds; falls back to ``load_digits``."""
    spec = importlib.util.find_spec("sklearn")
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = (
            Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
        )
    if path is not None and path.is_file():
        raw = np.loadtxt(path, delimiter=",")
        return raw[:, :-1].reshape(-1, DIGIT, DIGIT), raw[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits  # pragma: no cover - unusual installs

    d = load_digits()  # pragma: no cover
    return d.images, d.target.astype(np.int64)  # pragma: no cover


def base_indices(data_seed: int, n: int) -> dict[str, np.ndarray]:
    """Disjoint train/val/test index sets (60/20/20) into the ``n`` base digits."""
    perm = np.random.default_rng(data_seed).permutation(n)
    n_tr = int(round(BASE_FRACTIONS[0] * n))
    n_va = int(round(BASE_FRACTIONS[1] * n))
    return {"train": perm[:n_tr], "val": perm[n_tr : n_tr + n_va], "test": perm[n_tr + n_va :]}


@functools.lru_cache(maxsize=4)
def base_pools(data_seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The scikit-learn digits split into disjoint train/val/test pools: {split: (images
    float32 [n, 8, 8] in [0, 1], labels int64 [n])}."""
    images, labels = load_sklearn_digits()
    images = (images / 16.0).astype(np.float32)
    parts = base_indices(data_seed, len(labels))
    return {s: (images[idx], labels[idx]) for s, idx in parts.items()}


@functools.lru_cache(maxsize=16)
def _build_split_cached(split: str, n: int, data_seed: int) -> tuple[Tensor, Tensor, Tensor]:
    images, labels = base_pools(data_seed)[split]
    # One row of uniforms per sample (drawn row by row), so that the first k samples do not
    # depend on n: [left digit, right digit, left row, left col, right row, right col].
    u = np.random.default_rng([data_seed, _SPLIT_IDS[split]]).random((n, 6))
    li = (u[:, 0] * len(labels)).astype(np.int64)
    ri = (u[:, 1] * len(labels)).astype(np.int64)
    lo = np.asarray(LEFT_OFFSETS)[(u[:, 2:4] * len(LEFT_OFFSETS)).astype(np.int64)]
    ro = np.asarray(RIGHT_OFFSETS)[(u[:, 4:6] * len(RIGHT_OFFSETS)).astype(np.int64)]
    canvas = np.zeros((n, CANVAS, CANVAS), dtype=np.float32)
    for i in range(n):
        (a, b), (c, d) = lo[i], ro[i]
        canvas[i, a : a + DIGIT, b : b + DIGIT] = images[li[i]]
        view = canvas[i, c : c + DIGIT, d : d + DIGIT]
        np.maximum(view, images[ri[i]], out=view)
    x = (torch.from_numpy(canvas).unsqueeze(1) - PIXEL_MEAN) / PIXEL_STD
    return x, torch.from_numpy(labels[li]), torch.from_numpy(labels[ri])


def build_split(split: str, n: int, data_seed: int = DEFAULT_DATA_SEED) -> dict[str, Tensor]:
    """Samples of one split: {"image": float32 [n, 1, 14, 14] (standardised), "left": int64
    [n], "right": int64 [n]}.

    Deterministic in (split, data_seed); the first k samples do not depend on n ≥ k."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"split must be one of {list(_SPLIT_IDS)}, got {split!r}")
    check_int("n", n, 1)
    check_int("data_seed", data_seed, 0)
    x, left, right = _build_split_cached(split, n, data_seed)
    return {"image": x, "left": left, "right": right}


class TensorBatchLoader:
    """Batches of in-memory tensors, sharded over ranks like ``DistributedSampler``.

    Iterating uses the permutation of epoch ``e`` (seed ``seed + e``) and then advances
    ``e`` by one, so repeated iteration reshuffles; call :meth:`set_epoch` to pin it (the
    trainer does this for exact resume). See the module docstring for the sharding rule."""

    def __init__(
        self,
        data: Mapping[str, Tensor],
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        check_int("batch_size", batch_size, 1)
        check_int("world_size", world_size, 1)
        check_int("rank", rank, 0, world_size - 1)
        check_int("seed", seed, 0)
        sizes = {k: v.shape[0] for k, v in data.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"all tensors need the same first dimension, got {sizes}")
        self.data = dict(data)
        self.n = next(iter(sizes.values()))
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        if self.per_rank < (batch_size if drop_last else 1):
            raise ValueError(
                f"each of the {world_size} ranks gets {self.per_rank} of {self.n} samples, fewer "
                f"than batch_size={batch_size} with drop_last=True; lower batch_size or world_size"
            )

    @property
    def per_rank(self) -> int:
        """Samples this rank sees per epoch (pad batches not counted)."""
        if self.drop_last:
            return self.n // self.world_size
        return math.ceil((self.n - self.rank) / self.world_size)

    def set_epoch(self, epoch: int) -> None:
        check_int("epoch", epoch, 0)
        self.epoch = epoch

    def indices(self, epoch: int | None = None) -> Tensor:
        """This rank's sample indices for ``epoch`` (default: the current one)."""
        e = self.epoch if epoch is None else epoch
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + e)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        total = self.n // self.world_size * self.world_size if self.drop_last else self.n
        return order[:total][self.rank :: self.world_size]

    def __len__(self) -> int:
        if self.drop_last:
            return self.per_rank // self.batch_size
        return math.ceil(self.n / (self.batch_size * self.world_size))  # the same on every rank

    def shard_sizes(self, step: int) -> list[int]:
        """Every rank's real example count at ``step`` (``envs._sampling.shard_sizes``)."""
        return shard_sizes(self.n, self.batch_size, self.world_size, step)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        idx = self.indices()
        self.epoch += 1
        pad = torch.zeros(1, dtype=torch.long)  # any real example; it carries no weight
        for b in range(len(self)):
            sel = idx[b * self.batch_size : (b + 1) * self.batch_size]
            if len(sel) == 0:  # this rank's share of the last global batch is empty
                sel = pad
            yield {k: v.index_select(0, sel) for k, v in self.data.items()}


# ---------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------


def digits_encoder(channels: Sequence[int] = (16, 32), hidden: int = 64) -> nn.Sequential:
    """The shared CNN: conv3×3-ReLU-maxpool2 twice, flatten, Linear-ReLU (``hidden`` wide)."""
    c1, c2 = channels
    side = CANVAS // 4  # two 2×2 max-pools
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(c2 * side * side, hidden), nn.ReLU(),
    )  # fmt: skip


def digits_stages(encoder: nn.Sequential) -> list[nn.Module]:
    """Stem conv-ReLU-pool, then two blocks (conv-ReLU-pool; flatten-Linear-ReLU)."""
    return [encoder[0:3], encoder[3:6], encoder[6:9]]


def _rep_and_outputs(outs: dict[str, Tensor], rep: Tensor | None, x: Tensor,
                     task: str | None) -> tuple[Tensor | None, dict[str, Tensor]]:
    return rep, outs  # MultiDigitsNet's convention


class MultiDigitsNet(MTLModel):
    """Small CNN encoder (shared; its output is the representation) + linear heads."""

    def __init__(
        self, tasks: Sequence[str] = TASKS, channels: Sequence[int] = (16, 32), hidden: int = 64
    ) -> None:
        super().__init__()
        self.encoder = digits_encoder(channels, hidden)
        self.heads = nn.ModuleDict({t: nn.Linear(hidden, 10) for t in tasks})

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        rep = self.encoder(x)
        return rep, {t: head(rep) for t, head in self.heads.items()}


# ---------------------------------------------------------------------------------------
# benchmark
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MultiDigitsConfig:
    """Validated options of :class:`MultiDigits`."""

    loss_scale: tuple[float, ...] = (1.0, 1.0)
    n_train: int = DEFAULT_SIZES["train"]
    n_val: int = DEFAULT_SIZES["val"]
    n_test: int = DEFAULT_SIZES["test"]
    data_seed: int = DEFAULT_DATA_SEED

    def __post_init__(self) -> None:
        ls = self.loss_scale
        if isinstance(ls, (str, bytes)) or not isinstance(ls, Sequence) or len(ls) != len(TASKS):
            raise ValueError(
                f"loss_scale must be {len(TASKS)} non-negative numbers (one per task "
                f"{list(TASKS)}), e.g. (1.0, 10.0); got {ls!r}"
            )
        for t, s in zip(TASKS, ls):
            check_range(f"loss_scale[{t}]", s, 0.0)
        if not any(s > 0 for s in ls):
            raise ValueError(f"loss_scale must have a positive entry, got {ls!r}")
        object.__setattr__(self, "loss_scale", tuple(float(s) for s in ls))
        for name in ("n_train", "n_val", "n_test"):
            check_int(name, getattr(self, name), 1)
        check_int("data_seed", self.data_seed, 0)


#: Single-task test accuracy measured by ``measure_stl()`` (seeds 0, 1, 2; mean; default
#: data options and protocol; torch 2.15 CPU, 1 thread; under 2 minutes).
STL_ACCURACY: dict[str, float] | None = {"left": 0.9397, "right": 0.9353}


@register("multi_digits")
class MultiDigits(Benchmark):
    """Two overlaid scikit-learn digits; tasks: the left digit and the right digit."""

    description = "Two overlaid 8×8 scikit-learn digits on a 14×14 canvas (MultiMNIST-style)"
    tasks = TASKS
    metrics = {t: (Metric("accuracy", higher_is_better=True),) for t in TASKS}
    protocol = Protocol(
        optimizer="adam",
        lr=1e-3,
        batch_size=64,
        epochs=10,
        average_last=1,
        selection="last",
        source="mtlx default for this embedded benchmark (no paper protocol); envs/multi_digits.py",
    )
    options = {f.name: f.default for f in MultiDigitsConfig.__dataclass_fields__.values()}
    model_options = {"channels": (16, 32), "hidden": 64}

    def __init__(self, root: str | None = None, **options: Any) -> None:
        # ``root`` is accepted for interface uniformity and ignored: the data ships with
        # scikit-learn.
        self.root = root
        self.config = MultiDigitsConfig(**options)
        self._sizes = {
            "train": self.config.n_train,
            "val": self.config.n_val,
            "test": self.config.n_test,
        }
        self._scale = torch.tensor(self.config.loss_scale)
        defaults = MultiDigitsConfig()
        same_data = all(
            getattr(self.config, k) == getattr(defaults, k)
            for k in ("n_train", "n_val", "n_test", "data_seed")
        )
        if same_data and STL_ACCURACY is not None:
            self.stl_reference = {t: {"accuracy": STL_ACCURACY[t]} for t in TASKS}
            self.stl_reference_source = "measure_stl(seeds=(0, 1, 2)) in envs/multi_digits.py"
        else:
            self.stl_reference = None

    def data(self, split: str) -> dict[str, Tensor]:
        if split not in self.splits:
            raise ValueError(f"split must be one of {list(self.splits)}, got {split!r}")
        return build_split(split, self._sizes[split], self.config.data_seed)

    def build_model(self, **model_options: Any) -> MTLModel:
        """The HPS :class:`MultiDigitsNet`, or ``arch=<name>`` (with that architecture's
        options) built from the same encoder and heads (docs/architectures.md)."""
        arch, arch_opts, own = architectures.split_options(model_options)
        spec = self.architecture_spec(**own)
        if arch in (None, "hps") and not arch_opts:
            opts = {**self.model_options, **own}
            return MultiDigitsNet(self.tasks, tuple(opts["channels"]), opts["hidden"])
        return architectures.build(arch or "hps", spec, **arch_opts)

    def architecture_spec(self, **model_options: Any) -> architectures.ArchSpec:
        """This benchmark's model as parts: the CNN encoder (a stem and two blocks),
        Linear(hidden, 10) heads, 1×14×14 inputs."""
        unknown = sorted(set(model_options) - set(self.model_options))
        if unknown:
            raise ValueError(
                f"unknown model option(s) {unknown} for multi_digits; valid: "
                f"{list(self.model_options)}, and arch=<{'|'.join(architectures.available())}> "
                f"with its options ({', '.join(sorted(architectures.OPTION_NAMES))})"
            )
        opts = {**self.model_options, **model_options}
        ch = opts["channels"]
        if not (isinstance(ch, Sequence) and len(ch) == 2):
            raise ValueError(f"channels must be two positive integers, got {ch!r}")
        for i, c in enumerate(ch):
            check_int(f"channels[{i}]", c, 1)
        hidden = opts["hidden"]
        check_int("hidden", hidden, 1)
        return architectures.ArchSpec(
            benchmark=self.name, tasks=self.tasks,
            encoder=functools.partial(digits_encoder, tuple(ch), hidden),
            head=lambda task: nn.Linear(hidden, 10),
            collate=_rep_and_outputs, input_shape=(1, CANVAS, CANVAS), stages=digits_stages,
        )  # fmt: skip

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
        num_workers: int = 0,  # in-memory tensors: worker processes would only add overhead
        pin_memory: bool = False,
    ) -> TensorBatchLoader:
        return TensorBatchLoader(
            self.data(split), batch_size, shuffle=shuffle, seed=seed, rank=rank,
            world_size=world_size, drop_last=drop_last,
        )  # fmt: skip

    def forward_losses(self, model: MTLModel, batch: Mapping[str, Tensor]) -> Forward:
        rep, logits = model(batch["image"])
        scale = self._scale.to(batch["image"].device)
        losses = torch.stack([F.cross_entropy(logits[t], batch[t]) for t in self.tasks]) * scale
        return Forward(losses=losses, rep=rep, outputs=logits)

    def new_evaluator(self) -> ClassificationEvaluator:
        return ClassificationEvaluator(self.tasks)


@dataclass
class ClassificationEvaluator(Evaluator):
    """Accuracy of every task, pooled over a split (``outputs[task]``: logits)."""

    tasks: Sequence[str]
    accuracy: dict[str, Accuracy] = field(init=False)

    def __post_init__(self) -> None:
        self.accuracy = {t: Accuracy() for t in self.tasks}

    def update(self, forward: Forward, batch: Mapping[str, Tensor]) -> None:
        for t in self.tasks:
            self.accuracy[t].update(forward.outputs[t], batch[t])

    def all_reduce_(self) -> ClassificationEvaluator:
        for acc in self.accuracy.values():
            acc.all_reduce_()
        return self

    def compute(self) -> dict[str, dict[str, float]]:
        return {t: {"accuracy": acc.compute()} for t, acc in self.accuracy.items()}


# ---------------------------------------------------------------------------------------
# a minimal in-process loop: for the single-task reference, examples and tests. The
# orchestrator's trainer is the full one (checkpoints, Ray, results); this is the same
# step, nothing more.
# ---------------------------------------------------------------------------------------


def fit(
    bench: MultiDigits,
    method: methods.Method,
    *,
    epochs: int | None = None,
    seed: int = 0,
    level: str = "auto",
    model_options: Mapping[str, Any] | None = None,
) -> MultiDigitsNet:
    """Train a fresh model with ``method`` under the benchmark's protocol (Adam, lr, batch)."""
    p = bench.protocol
    epochs = p.epochs if epochs is None else epochs
    check_int("epochs", epochs, 1)
    torch.manual_seed(seed)
    model = bench.build_model(**(model_options or {}))
    opt = torch.optim.Adam(list(model.parameters()) + list(method.parameters()), lr=p.lr)
    loader = bench.make_loader("train", p.batch_size, shuffle=True, seed=seed)
    model.train()
    for epoch in range(epochs):
        method.start_epoch(epoch, epochs)
        if hasattr(model, "start_epoch"):  # architectures whose forward follows progress (LTB)
            model.start_epoch(epoch, epochs)
        loader.set_epoch(epoch)
        for batch in loader:
            opt.zero_grad(set_to_none=True)
            fwd = bench.forward_losses(model, batch)
            methods.backward(
                method, fwd.losses, model.shared_parameters(), model.all_task_parameters(),
                rep=fwd.rep, level=level,  # type: ignore[arg-type]
            )  # fmt: skip
            opt.step()
            if method.uses_after_step:
                with torch.no_grad():
                    method.after_step(bench.forward_losses(model, batch).losses)
    return model


@torch.no_grad()
def evaluate(
    bench: MultiDigits, model: MTLModel, split: str = "test"
) -> dict[str, dict[str, float]]:
    """{task: {"accuracy": ...}} of ``model`` on a whole split."""
    model.eval()
    ev = bench.new_evaluator()
    for batch in bench.make_loader(split, 512):
        ev.update(bench.forward_losses(model, batch), batch)
    model.train()
    return ev.compute()


def measure_stl(seeds: Sequence[int] = (0, 1, 2), epochs: int | None = None) -> dict[str, float]:
    """Single-task test accuracy per task (mean over ``seeds``): the same network trained on
    that task alone (``loss_scale`` = one-hot), protocol defaults, default data."""
    out = {}
    for i, task in enumerate(TASKS):
        scale = tuple(1.0 if j == i else 0.0 for j in range(len(TASKS)))
        bench = MultiDigits(loss_scale=scale)
        accs = [
            evaluate(bench, fit(bench, methods.create("ew", len(TASKS)), epochs=epochs, seed=s))[
                task
            ]["accuracy"]
            for s in seeds
        ]
        out[task] = sum(accs) / len(accs)
    return out
