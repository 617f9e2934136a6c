"""QM9 — 11 molecular property regressions with a shared MPNN (Nash-MTL / FAMO protocol).

Ramakrishnan et al., "Quantum chemistry structures and properties of 134 kilo molecules",
Scientific Data 2014, https://doi.org/10.1038/sdata.2014.22; model: Gilmer et al., "Neural
Message Passing for Quantum Chemistry", ICML 2017, https://arxiv.org/abs/1704.01212. As an
MTL benchmark: Navon et al., "Multi-Task Learning as a Bargaining Game" (Nash-MTL), ICML
2022, https://arxiv.org/abs/2202.01017.

Reference code followed: nash-mtl ``experiments/quantum_chemistry/{trainer,models,utils}.py``
(FAMO's copy is the same) — docs/benchmarks.md §QM9.

Data: PyTorch Geometric's processed QM9, ``<root>/processed/data_v3.pt`` as
``torch_geometric.datasets.QM9(root)`` writes it (130,831 molecules; node features x: 11,
bond one-hot edge_attr: 4, y: 1×19 per molecule in PyG's units, eV for energies). It is
read with PyG's ``InMemoryDataset.load`` through a subclass that defines neither
``download`` nor ``process`` — PyG's own ``QM9`` class would try to download whenever the
``raw/`` files are absent — so nothing is ever fetched; a missing file is a
``FileNotFoundError`` that says how to produce it.

Tasks (PyG target indices ``[0, 1, 2, 3, 5, 6, 12, 13, 14, 15, 11]``): μ, α, ε_HOMO, ε_LUMO,
⟨R²⟩, ZPVE, U0, U, H, G (atomisation energies, PyG 12–15), c_v. The gap (4) and the total
energies (7–10) are not used.

Transforms (nash-mtl): ``Complete`` — the fully connected graph without self-loops, bonded
pairs keep their 4-d bond one-hot and other pairs get zeros — then
``Distance(norm=False)``, appending the interatomic distance: edge_attr is 5-d.

Targets are z-scored per task: y ← (y − mean)/std with ``std`` unbiased. ``target_stats``
chooses the statistics: ``"train"`` (default; the training split only, no test leakage) or
``"all"`` — what nash-mtl effectively does (its ``train_dataset.data.y`` is the storage of
the whole dataset, docs/benchmarks.md §QM9) and LibMTL does explicitly. The difference in the
statistics is tiny at 110k vs 131k molecules.

Splits (nash-mtl): a permutation of all molecules, then test = first ``test_size`` (10,000),
val = next ``val_size`` (10,000), train = the rest (110,831). nash-mtl permutes with
``dataset.shuffle()`` under its global RNG (after model init), which cannot be reproduced
outside that script; here the permutation is ``torch.randperm`` under a generator seeded
with ``split_seed`` (default 42, nash-mtl's default seed), or LibMTL's fixed permutation
file (``examples/qm9/random_split.t``, a LongTensor of all indices) given as ``split_file``.

Model (PyG ``qm9_nn_conv`` example, nash-mtl ``Net``, dim 64): Linear(11→64) + ReLU;
3 iterations of NNConv(64, 64, nn = Linear(5,128)-ReLU-Linear(128, 64·64), aggr="mean") +
ReLU with a GRU(64, 64) update (weights shared across iterations); Set2Set(64, 3 steps);
Linear(128→64) + ReLU = the shared representation; 11 heads Linear(64→1). Shared
parameters: lin0, conv, gru, set2set, lin1 (nash-mtl ``shared_parameters``).

Loss: MSE per task on the normalised targets (batch mean). Metric: MAE per task (↓) after
un-normalising (×std), with HOMO, LUMO, ZPVE, U0, U, H, G converted eV → meV (×1000,
nash-mtl ``multiply_indx``); the other units are PyG's (D, a₀³, a₀², cal/mol/K).

Protocol (nash-mtl trainer defaults): Adam lr 1e-3, batch 120, 300 epochs,
ReduceLROnPlateau(mode="min", factor 0.7, patience 5, min_lr 1e-5) stepped on the
validation Δm; test metrics at the epoch with the best validation Δm; 3 seeds. STL
reference: nash-mtl ``utils.py`` BASE (MPNN single-task MAEs, meV where converted).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from envs._sampling import EpochDataLoader, ShardedBatchSampler, worker_options
from envs.base import Benchmark, Evaluator, Forward, Metric, MTLModel, Protocol, register
from envs.metrics import MeanAbsoluteError

PROCESSED_FILE = "processed/data_v3.pt"
TARGETS = (0, 1, 2, 3, 5, 6, 12, 13, 14, 15, 11)
TASKS = ("mu", "alpha", "homo", "lumo", "r2", "zpve", "U0", "U", "H", "G", "cv")
MEV_TASKS = frozenset({"homo", "lumo", "zpve", "U0", "U", "H", "G"})  # positions 2,3,5,6,7,8,9
NUM_NODE_FEATURES, NUM_BOND_TYPES, NUM_PYG_TARGETS = 11, 4, 19
TARGET_STATS = ("train", "all")

#: nash-mtl ``experiments/quantum_chemistry/utils.py`` BASE (MPNN STL MAE)
STL_MAE = (0.0671, 0.1814, 60.576, 53.915, 0.5027, 4.539, 58.838, 64.244, 63.852, 66.223, 0.07212)


# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------


def _processed_dataset_class():
    from torch_geometric.data import InMemoryDataset

    class QM9Processed(InMemoryDataset):
        """PyG's processed QM9 file, loaded without any download/process machinery."""

        def __init__(self, root: str, transform=None):
            super().__init__(root, transform, log=False)
            self.load(self.processed_paths[0])

        @property
        def raw_file_names(self) -> list[str]:
            return []

        @property
        def processed_file_names(self) -> str:
            return os.path.basename(PROCESSED_FILE)

    return QM9Processed


class CompleteGraph:
    """nash-mtl's ``Complete`` transform: all ordered pairs i ≠ j as edges; bonded pairs keep
    their edge_attr, the others get zeros."""

    def __call__(self, data):
        from torch_geometric.utils import remove_self_loops

        n = data.num_nodes
        device = data.edge_index.device
        row = torch.arange(n, device=device).view(-1, 1).repeat(1, n).view(-1)
        col = torch.arange(n, device=device).repeat(n)
        edge_index = torch.stack([row, col], dim=0)
        edge_attr = None
        if data.edge_attr is not None:
            idx = data.edge_index[0] * n + data.edge_index[1]
            edge_attr = data.edge_attr.new_zeros((n * n, *data.edge_attr.shape[1:]))
            edge_attr[idx] = data.edge_attr
        data.edge_index, data.edge_attr = remove_self_loops(edge_index, edge_attr)
        return data

    def __repr__(self) -> str:
        return "CompleteGraph()"


def load_processed(root: Path, transform=None):
    """The processed QM9 dataset under ``root`` (checked for the fields the benchmark uses)."""
    path = root / PROCESSED_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"QM9: {str(path)!r} not found. Expected torch_geometric's processed layout "
            f"<root>/{PROCESSED_FILE}; produce it once where the internet is reachable with "
            "`torch_geometric.datasets.QM9(root)` and copy <root>/processed here (mtlx never "
            "downloads)"
        )
    try:
        ds = _processed_dataset_class()(str(root), transform=transform)
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        raise ValueError(f"QM9: could not load {str(path)!r} as a PyG InMemoryDataset: {e}") from e
    data = ds._data
    checks = {
        "x": (1, NUM_NODE_FEATURES), "edge_attr": (1, NUM_BOND_TYPES), "y": (1, NUM_PYG_TARGETS),
        "pos": (1, 3), "edge_index": (0, 2),
    }
    for key, (dim, size) in checks.items():
        value = getattr(data, key, None)
        if not isinstance(value, Tensor) or value.dim() != 2 or value.shape[dim] != size:
            shape = tuple(value.shape) if isinstance(value, Tensor) else None
            want = f"[*, {size}]" if dim == 1 else f"[{size}, *]"
            raise ValueError(
                f"QM9: {str(path)!r} field {key!r} has shape {shape}, expected {want} "
                "(torch_geometric.datasets.QM9's processed format)"
            )
    if ds.slices is None or data.y.shape[0] != len(ds):
        raise ValueError(
            f"QM9: {str(path)!r} must hold one y row per molecule; got {data.y.shape[0]} rows "
            f"for {len(ds)} molecules"
        )
    return ds


# ---------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------


class MPNNEncoder(nn.Module):
    """Gilmer's MPNN as in PyG's qm9_nn_conv example: NNConv + GRU ×3, Set2Set, Linear."""

    def __init__(self, num_features: int = NUM_NODE_FEATURES, dim: int = 64,
                 edge_dim: int = NUM_BOND_TYPES + 1):
        super().__init__()
        from torch_geometric.nn import NNConv
        from torch_geometric.nn.aggr import Set2Set

        self.lin0 = nn.Linear(num_features, dim)
        edge_net = nn.Sequential(nn.Linear(edge_dim, 128), nn.ReLU(), nn.Linear(128, dim * dim))
        self.conv = NNConv(dim, dim, edge_net, aggr="mean")
        self.gru = nn.GRU(dim, dim)
        self.set2set = Set2Set(dim, processing_steps=3)
        self.lin1 = nn.Linear(2 * dim, dim)

    def forward(self, data) -> Tensor:
        out = F.relu(self.lin0(data.x))
        h = out.unsqueeze(0)
        for _ in range(3):
            m = F.relu(self.conv(out, data.edge_index, data.edge_attr))
            out, h = self.gru(m.unsqueeze(0), h)
            out = out.squeeze(0)
        out = self.set2set(out, data.batch, dim_size=data.num_graphs)
        return F.relu(self.lin1(out))


class QM9Net(MTLModel):
    """Shared :class:`MPNNEncoder` + one Linear(dim, 1) head per target."""

    def __init__(self, tasks: tuple[str, ...] = TASKS, dim: int = 64):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(
                f"dim must be a positive integer (64 = the reference MPNN), got {dim!r}"
            )
        self.tasks = tuple(tasks)
        self.encoder = MPNNEncoder(dim=dim)
        self.heads = nn.ModuleDict({t: nn.Linear(dim, 1) for t in self.tasks})

    def forward(self, data) -> tuple[Tensor, Tensor]:
        """→ (predictions [B, 11] of the normalised targets, representation [B, dim])."""
        rep = self.encoder(data)
        return torch.cat([self.heads[t](rep) for t in self.tasks], dim=1), rep


# ---------------------------------------------------------------------------------------
# benchmark
# ---------------------------------------------------------------------------------------


class QM9Evaluator(Evaluator):
    """MAE per target in the reference's units: |ŷ − y|·std, ×1000 for eV → meV."""

    def __init__(self, tasks: tuple[str, ...], std: Tensor):
        self.tasks = tasks
        scale = [float(s) * (1000.0 if t in MEV_TASKS else 1.0) for t, s in zip(tasks, std)]
        self.mae = MeanAbsoluteError(num_targets=len(tasks), scale=scale)

    def update(self, forward: Forward, batch: Any) -> None:
        self.mae.update(forward.outputs["pred"].detach(), batch.y)

    def all_reduce_(self) -> QM9Evaluator:
        """Sum the states over torch.distributed ranks (each rank evaluated its shard)."""
        self.mae.all_reduce_()
        return self

    def compute(self) -> dict[str, dict[str, float]]:
        return {t: {"mae": v} for t, v in zip(self.tasks, self.mae.compute())}


@register("qm9")
class QM9(Benchmark):
    """QM9, 11 targets, MPNN, Nash-MTL protocol. See the module docstring."""

    description = "QM9: 11 molecular property regressions, MPNN (Nash-MTL protocol)"
    options: Mapping[str, Any] = {
        "split_seed": 42, "test_size": 10_000, "val_size": 10_000, "split_file": None,
        "target_stats": "train",
    }
    tasks = TASKS
    metrics = {t: (Metric("mae", higher_is_better=False),) for t in TASKS}
    protocol = Protocol(
        optimizer="adam", lr=1e-3, batch_size=120, epochs=300, lr_schedule="plateau",
        gamma=0.7, patience=5, min_lr=1e-5, selection="best_val", average_last=1,
        source="nash-mtl experiments/quantum_chemistry/trainer.py (Adam lr 1e-3, batch 120, "
               "300 epochs, ReduceLROnPlateau(min, 0.7, patience 5, min_lr 1e-5) on val Δm; "
               "test metrics at the epoch of best val Δm)",
    )
    stl_reference = {t: {"mae": v} for t, v in zip(TASKS, STL_MAE)}
    stl_reference_source = (
        "nash-mtl experiments/quantum_chemistry/utils.py BASE "
        "(docs/benchmarks.md §Single-task references)"
    )

    def __init__(self, root: str | os.PathLike | None = None, split_seed: int = 42,
                 test_size: int = 10_000, val_size: int = 10_000,
                 split_file: str | os.PathLike | None = None, target_stats: str = "train"):
        if root is None:
            raise ValueError(f"qm9 needs root=<folder holding {PROCESSED_FILE}> (PyG's QM9 root)")
        sizes = (("split_seed", split_seed), ("test_size", test_size), ("val_size", val_size))
        for name, v in sizes:
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
        if target_stats not in TARGET_STATS:
            raise ValueError(
                f"target_stats must be one of {list(TARGET_STATS)}, got {target_stats!r}"
            )
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"QM9 root {str(self.root)!r} is not a directory; expected <root>/{PROCESSED_FILE}"
            )
        from torch_geometric import transforms as T

        self.data = load_processed(self.root, T.Compose([CompleteGraph(), T.Distance(norm=False)]))
        n = len(self.data)
        if test_size + val_size >= n:
            raise ValueError(
                f"QM9: test_size ({test_size}) + val_size ({val_size}) must be below the "
                f"{n} molecules in {self.root / PROCESSED_FILE}"
            )
        if split_file is not None:
            perm = self._read_permutation(Path(split_file), n)
            self.split_source = f"file: {split_file}"
        else:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
            self.split_source = f"torch.randperm under manual_seed({split_seed})"
        self.indices = {
            "test": perm[:test_size],
            "val": perm[test_size:test_size + val_size],
            "train": perm[test_size + val_size:],
        }
        self.target_stats = target_stats
        y = self.data._data.y[:, list(TARGETS)].double()
        ref = y[self.indices["train"]] if target_stats == "train" else y
        self.mean, self.std = ref.mean(0), ref.std(0)
        if not (torch.isfinite(self.std).all() and (self.std > 0).all()):
            raise ValueError(
                f"QM9: a target has zero or non-finite std over the {target_stats} split"
            )
        # One normalised row per molecule replaces the 19 raw columns (slices stay valid).
        self.data._data.y = ((y - self.mean) / self.std).float()

    @staticmethod
    def _read_permutation(path: Path, n: int) -> Tensor:
        if not path.is_file():
            raise FileNotFoundError(f"QM9 split_file {str(path)!r} not found (a torch LongTensor "
                                    "permutation such as LibMTL's examples/qm9/random_split.t)")
        perm = torch.load(path, map_location="cpu", weights_only=True)
        if (not isinstance(perm, Tensor) or perm.dim() != 1 or perm.dtype != torch.long
                or perm.numel() != n or not torch.equal(perm.sort().values, torch.arange(n))):
            raise ValueError(
                f"QM9 split_file {str(path)!r} must be a 1-D LongTensor permutation of range({n})"
            )
        return perm

    def dataset(self, split: str):
        if split not in self.indices:
            raise ValueError(f"split must be one of {list(self.indices)}, got {split!r}")
        return self.data[self.indices[split]]

    def build_model(self, dim: int = 64) -> QM9Net:
        return QM9Net(self.tasks, dim=dim)

    def make_loader(self, split: str, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                    rank: int = 0, world_size: int = 1, drop_last: bool = False,
                    num_workers: int = 0, pin_memory: bool = False) -> EpochDataLoader:
        """PyG ``Batch`` objects (``batch.y``: [B, 11] normalised targets); ``batch_size``
        per rank; each ``iter()`` is the next seeded pass (``set_epoch`` to resume)."""
        from torch_geometric.loader.dataloader import Collater

        ds = self.dataset(split)
        sampler = ShardedBatchSampler(len(ds), batch_size, shuffle=shuffle, seed=seed, rank=rank,
                                      world_size=world_size, drop_last=drop_last)
        return EpochDataLoader(ds, batch_sampler=sampler, collate_fn=Collater(ds),
                               **worker_options(num_workers, pin_memory))

    def forward_losses(self, model: MTLModel, batch: Any) -> Forward:
        pred, rep = model(batch)
        losses = F.mse_loss(pred, batch.y, reduction="none").mean(0)
        return Forward(losses=losses, rep=rep, outputs={"pred": pred})

    def new_evaluator(self) -> QM9Evaluator:
        return QM9Evaluator(self.tasks, self.std)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "root": str(self.root),
            "split_source": self.split_source,
            "split_sizes": {s: len(v) for s, v in self.indices.items()},
            "target_stats": self.target_stats,
            "target_mean": self.mean.tolist(),
            "target_std": self.std.tolist(),
        }
