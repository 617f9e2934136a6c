"""Tiny fixtures in the real on-disk layouts of CelebA, Office-31/Office-Home and QM9.

Each writer produces a miniature copy of the published dataset that the benchmark
loaders read through exactly the same code path as the real data (file names, header
lines, value encodings, folder structure, PyG's processed-file format). Used by the tests
and by anyone who wants to try a benchmark without the real data. Images are small random
JPEGs; labels/targets are random (seeded), so the fixtures test plumbing, not learning.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

#: The 40 attribute names in the order of the header of ``list_attr_celeba.txt``.
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
    "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes "
    "No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling "
    "Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace "
    "Wearing_Necktie Young"
).split()

OFFICE31_CLASSES = (
    "back_pack bike bike_helmet bookcase bottle calculator desk_chair desk_lamp "
    "desktop_computer file_cabinet headphones keyboard laptop_computer letter_tray "
    "mobile_phone monitor mouse mug paper_notebook pen phone printer projector punchers "
    "ring_binder ruler scissors speaker stapler tape_dispenser trash_can"
).split()

OFFICE_HOME_CLASSES = (
    "Alarm_Clock Backpack Batteries Bed Bike Bottle Bucket Calculator Calendar Candles Chair "
    "Clipboards Computer Couch Curtains Desk_Lamp Drill Eraser Exit_Sign Fan File_Cabinet "
    "Flipflops Flowers Folder Fork Glasses Hammer Helmet Kettle Keyboard Knives Lamp_Shade "
    "Laptop Marker Monitor Mop Mouse Mug Notebook Oven Pan Paper_Clip Pen Pencil Postit_Notes "
    "Printer Push_Pin Radio Refrigerator Ruler Scissors Screwdriver Shelf Sink Sneakers Soda "
    "Speaker Spoon TV Table Telephone ToothBrush Toys Trash_Can Webcam"
).split()

OFFICE_DOMAINS = {
    "office31": ("amazon", "dslr", "webcam"),
    "office_home": ("Art", "Clipart", "Product", "Real_World"),
}


def _jpeg(path: Path, rng: np.random.Generator, size: tuple[int, int]) -> None:
    w, h = size
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=90)


# ---------------------------------------------------------------------------------------
# CelebA
# ---------------------------------------------------------------------------------------


def write_celeba(
    root: str | os.PathLike,
    partition: Sequence[int] = (0,) * 12 + (1,) * 5 + (2,) * 5,
    *,
    layout: str = "official",
    image_size: tuple[int, int] = (18, 22),
    seed: int = 0,
) -> dict:
    """Write aligned CelebA: ``img_align_celeba/NNNNNN.jpg``, ``list_attr_celeba.txt``
    (count line, attribute-name line, then ``name  v1 ... v40`` with v ∈ {−1, 1}) and
    ``list_eval_partition.txt`` (``name split``, 0/1/2 = train/val/test).

    ``layout="official"`` mirrors the Google-Drive release FAMO reads (``Img/``, ``Anno/``,
    ``Eval/`` subfolders); ``"flat"`` puts all three at the root (torchvision's layout).
    ``partition[i]`` is the split of image ``i+1``. Real images are 178×218 (w×h); the
    fixture keeps that aspect ratio at ``image_size``. Returns the labels in {0,1}."""
    root = Path(root)
    if layout == "official":
        img_dir, attr, part = root / "Img/img_align_celeba", root / "Anno", root / "Eval"
    elif layout == "flat":
        img_dir, attr, part = root / "img_align_celeba", root, root
    else:
        raise ValueError(f"layout must be 'official' or 'flat', got {layout!r}")
    for d in (img_dir, attr, part):
        d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = len(partition)
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    labels = rng.integers(0, 2, (n, len(CELEBA_ATTRIBUTES)))
    for name in names:
        _jpeg(img_dir / name, rng, image_size)
    lines = [f"{n}", " ".join(CELEBA_ATTRIBUTES) + " "]  # the real header ends with a space
    for name, row in zip(names, labels):
        lines.append(name + "".join(f" {2 * int(v) - 1:2d}" for v in row))
    (attr / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (part / "list_eval_partition.txt").write_text(
        "".join(f"{name} {int(s)}\n" for name, s in zip(names, partition))
    )
    return {"names": names, "labels": labels, "partition": list(partition)}


# ---------------------------------------------------------------------------------------
# Office-31 / Office-Home
# ---------------------------------------------------------------------------------------


def office_image_dir(dataset: str, root: Path, domain: str) -> Path:
    """Office-31 keeps each domain's class folders under ``images/``; Office-Home does not."""
    return root / domain / "images" if dataset == "office31" else root / domain


def write_office(
    root: str | os.PathLike,
    dataset: str = "office31",
    per_class: Sequence[int] | None = None,
    *,
    image_size: tuple[int, int] = (12, 10),
    split_files: bool = False,
    seed: int = 0,
) -> dict:
    """Write ``<root>/<domain>/images/<class>/frame_NNNN.jpg`` (Office-31) or
    ``<root>/<Domain>/<Class>/NNNNN.jpg`` (Office-Home) with ``per_class[d]`` images per
    class in domain ``d``.

    ``split_files=True`` also writes LibMTL-format lists ``<root>/<domain>_<split>.txt``
    (``relative/path label`` per line; per class ⌊0.6n⌋ train, ⌊0.2n⌋ val, rest test) with
    labels in a shuffled class order, as LibMTL's own files are not alphabetical. Returns
    {domain: {split: [(relpath, label), ...]}} when split files are written."""
    if dataset not in OFFICE_DOMAINS:
        raise ValueError(f"dataset must be one of {list(OFFICE_DOMAINS)}, got {dataset!r}")
    root = Path(root)
    domains = OFFICE_DOMAINS[dataset]
    classes = OFFICE31_CLASSES if dataset == "office31" else OFFICE_HOME_CLASSES
    per_class = list(per_class) if per_class is not None else [5 + d for d in range(len(domains))]
    if len(per_class) != len(domains):
        raise ValueError(f"per_class needs one count per domain {domains}, got {per_class}")
    rng = np.random.default_rng(seed)
    label_of = {c: int(i) for i, c in enumerate(rng.permutation(classes))}
    lists: dict = {}
    for domain, k in zip(domains, per_class):
        lists[domain] = {"train": [], "val": [], "test": []}
        for cls in classes:
            folder = office_image_dir(dataset, root, domain) / cls
            folder.mkdir(parents=True, exist_ok=True)
            files = []
            for i in range(k):
                fname = f"frame_{i + 1:04d}.jpg" if dataset == "office31" else f"{i + 1:05d}.jpg"
                _jpeg(folder / fname, rng, image_size)
                files.append((folder / fname).relative_to(root).as_posix())
            order = rng.permutation(k)
            n_tr, n_va = int(0.6 * k), int(0.2 * k)
            for j, idx in enumerate(order):
                split = "train" if j < n_tr else "val" if j < n_tr + n_va else "test"
                lists[domain][split].append((files[idx], label_of[cls]))
        if split_files:
            for split, rows in lists[domain].items():
                (root / f"{domain}_{split}.txt").write_text(
                    "".join(f"{p} {y}\n" for p, y in rows)
                )
    return lists if split_files else {}


# ---------------------------------------------------------------------------------------
# QM9 (torch_geometric processed layout)
# ---------------------------------------------------------------------------------------


def qm9_molecule(rng: np.random.Generator, idx: int):
    """One random molecule with every field PyG's QM9 stores (x: 11 features, z, pos,
    edge_index sorted by source·N+target, edge_attr: 4-way one-hot bond type, y: 1×19,
    name, idx)."""
    from torch_geometric.data import Data

    types = {1: 0, 6: 1, 7: 2, 8: 3, 9: 4}
    n = int(rng.integers(3, 7))
    z = torch.tensor([6] + rng.choice([1, 6, 7, 8, 9], n - 1).tolist(), dtype=torch.long)
    rows, cols, bond = [], [], []
    for j in range(1, n):  # a random tree: every molecule is connected
        i, b = int(rng.integers(0, j)), int(rng.integers(0, 4))
        rows += [i, j]
        cols += [j, i]
        bond += [b, b]
    edge_index = torch.tensor([rows, cols], dtype=torch.long)
    perm = (edge_index[0] * n + edge_index[1]).argsort()
    edge_index = edge_index[:, perm]
    edge_attr = torch.nn.functional.one_hot(torch.tensor(bond)[perm], 4).float()
    hs = (z == 1).float()
    num_hs = torch.zeros(n).index_add_(0, edge_index[1], hs[edge_index[0]])
    type_oh = torch.nn.functional.one_hot(torch.tensor([types[int(a)] for a in z]), 5).float()
    hyb = torch.nn.functional.one_hot(torch.as_tensor(rng.integers(0, 3, n)), 3).float()
    aromatic = torch.as_tensor(rng.integers(0, 2, n)).float()
    x = torch.cat([type_oh, z.float()[:, None], aromatic[:, None], hyb, num_hs[:, None]], dim=1)
    pos = torch.as_tensor(rng.normal(0, 1.5, (n, 3)), dtype=torch.float)
    scale = torch.tensor([1, 10, .2, .2, 1, 100, .1, 20, 20, 20, 20, 5, 10, 10, 10, 10, 5, 1, 1.])
    y = (torch.as_tensor(rng.normal(0, 1, (1, 19)), dtype=torch.float) * scale)
    return Data(x=x, z=z, pos=pos, edge_index=edge_index, edge_attr=edge_attr, y=y,
                name=f"gdb_{idx + 1}", idx=idx)


def write_qm9(root: str | os.PathLike, num_molecules: int = 24, *, seed: int = 0) -> list:
    """Write ``<root>/processed/data_v3.pt`` (+ ``pre_transform.pt``/``pre_filter.pt``)
    exactly as ``torch_geometric.datasets.QM9`` does: ``InMemoryDataset.save`` of the
    molecule list, i.e. ``torch.save((data.to_dict(), slices, Data))``. Returns the list."""
    from torch_geometric.data import InMemoryDataset
    from torch_geometric.io import fs

    rng = np.random.default_rng(seed)
    data_list = [qm9_molecule(rng, i) for i in range(num_molecules)]
    processed = Path(root) / "processed"
    processed.mkdir(parents=True, exist_ok=True)
    InMemoryDataset.save(data_list, str(processed / "data_v3.pt"))
    fs.torch_save("None", str(processed / "pre_transform.pt"))
    fs.torch_save("None", str(processed / "pre_filter.pt"))
    return data_list
