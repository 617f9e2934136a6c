"""Cityscapes — 7-class (or 19-class) segmentation and (inverse) depth (2 tasks).

Data: Cityscapes (Cordts et al., CVPR 2016, https://www.cityscapes-dataset.com/) in
lorenmt/mtan's preprocessed ``.npy`` release (README "128x256, 651MB" Dropbox link;
docs/benchmarks.md §Cityscapes)::

    <root>/train/{image,label_7,label_19,depth}/<i>.npy   2975 samples (label_2 also exists)
    <root>/val/{image,label_7,label_19,depth}/<i>.npy     500 samples — the TEST split

    image 128 × 256 × 3 float     label_7 / label_19  128 × 256, −1 = ignore
    depth 128 × 256 × 1 float: INVERSE depth (disparity-derived, ≈ 0 … 0.49), 0 = invalid

The depth is inverse depth (mtan author, lorenmt/mtan issues #15 and #25), which is why the
published relative errors are ≈ 27–47: |p − g| / g with small g. Only the folders the chosen
``num_classes`` needs are read (``label_7`` or ``label_19``). LibMTL's copy (``cityscapes2``)
calls ``label_7`` just ``label``: rename or symlink it. A 256 × 512 release also loads; the
STL references hold at 128 × 256 only. Checks, augmentation and losses: :mod:`envs._dense`.

Tasks, losses, metrics (FAMO ``experiments/cityscapes/{trainer,utils}.py``, CAGrad
``cityscapes/``, LibMTL ``examples/cityscapes/main.py``):

* ``segmentation``: cross-entropy (−1 ignored) → ``miou`` ↑, ``pixel_acc`` ↑ (fractions);
* ``depth``: L1 over valid pixels → ``abs_err`` ↓, ``rel_err`` ↓ (a ratio, not %).

Options: as :mod:`envs.nyuv2` (``model``, ``attention_shared``, ``metrics_mode``, ``augment``,
``pretrained_path``, ``width``, ``val_size``) plus ``num_classes`` ∈ {7, 19} (default 7, the
papers' setting; no published STL reference for 19). ``metrics_mode="per_batch"`` groups 8
consecutive test images (the SegNet protocol's test batch size; 500 = 62 × 8 + 4, the last
group has 4 as the reference's last batch).

Augmentation (default on for segnet_mtan: CAGrad/IMGrad ``run.sh --apply_augmentation``,
FAMO's trainer default; LibMTL's Cityscapes example has none): random scale-crop and flip
with depth ÷ s, exactly as the references do. For *inverse* depth zooming in by s should
multiply by s, not divide; we keep the references' division so that numbers reproduce.

Protocols (docs/protocols.md §3, §4; docs/benchmarks.md §Cityscapes):

* segnet_mtan — Adam lr 1e-4, StepLR(100, 0.5), 200 epochs, batch 8 (train and test), 3
  seeds, mean test metrics of the last 10 epochs;
* resnet50_aspp — Adam lr 1e-4, weight decay 1e-5, StepLR(100, 0.5), 200 epochs, batch 64
  (LibMTL ``examples/cityscapes/main.py``, ``drop_last=True``, test batch 64); LibMTL picks
  the best epoch on the test set, mtlx reports the mean of the last 10 evaluations (see
  :mod:`envs.nyuv2`).

STL references:

* segnet_mtan: miou 0.7401, pixel_acc 0.9316, abs_err 0.0125, rel_err 27.77 — FAMO
  ``experiments/cityscapes/utils.py`` ``BASE``, CAGrad ``cityscapes/plot.py``, CAGrad Tab. 2;
* resnet50_aspp: 0.6906, 0.9154, 0.01282, 43.53 — Rep-MTL Tab. 2 (DB-MTL protocol).
"""

from __future__ import annotations

import os

from envs._dense import DEPTH_METRICS, SEG_METRICS, DenseBenchmark, Modality, ModelProtocol
from envs.base import Protocol, register

SIZE = (128, 256)
CLASS_CHOICES = (7, 19)

_SEGNET = ModelProtocol(
    protocol=Protocol(
        optimizer="adam", lr=1e-4, weight_decay=0.0, lr_schedule="step", step_size=100,
        gamma=0.5, batch_size=8, epochs=200, average_last=10, selection="last",
        source="CAGrad cityscapes/ and FAMO experiments/cityscapes/trainer.py (SegNet-MTAN): "
        "Adam 1e-4, StepLR(100, 0.5), 200 epochs, batch 8; mean test metrics of the last 10 "
        "epochs, 3 seeds (docs/protocols.md §3)",
    ),
    augment=True,
    metrics_mode="per_batch",
    stl_reference={
        "segmentation": {"miou": 0.7401, "pixel_acc": 0.9316},
        "depth": {"abs_err": 0.0125, "rel_err": 27.77},
    },
    stl_source="SegNet STL: FAMO experiments/cityscapes/utils.py BASE (from CAGrad), CAGrad "
    "cityscapes/plot.py, CAGrad paper Tab. 2; per-batch (8) depth metrics",
)

_RESNET = ModelProtocol(
    protocol=Protocol(
        optimizer="adam", lr=1e-4, weight_decay=1e-5, lr_schedule="step", step_size=100,
        gamma=0.5, batch_size=64, epochs=200, average_last=10, selection="last",
        source="LibMTL examples/cityscapes/main.py (DB-MTL/Rep-MTL protocol): HPS dilated "
        "ResNet-50 (ImageNet) + ASPP, Adam 1e-4, wd 1e-5, StepLR(100, 0.5), 200 epochs, batch "
        "64 (drop_last). LibMTL picks the best epoch on the test set; mtlx never selects on "
        "test and reports the mean of the last 10 evaluations instead",
    ),
    augment=False,
    metrics_mode="pooled",
    stl_reference={
        "segmentation": {"miou": 0.6906, "pixel_acc": 0.9154},
        "depth": {"abs_err": 0.01282, "rel_err": 43.53},
    },
    stl_source="DeepLabV3+ STL: Rep-MTL Tab. 2 (DB-MTL protocol, ImageNet-pretrained "
    "ResNet-50, pooled metrics; docs/benchmarks.md §Single-task references)",
    needs_pretrained=True,
)


@register("cityscapes")
class Cityscapes(DenseBenchmark):
    """Cityscapes (MTAN release): segmentation and inverse depth; see the module docstring."""

    description = "Cityscapes 7/19-class segmentation + inverse depth (MTAN .npy release)"
    tasks = ("segmentation", "depth")
    metrics = {"segmentation": SEG_METRICS, "depth": DEPTH_METRICS}
    task_channels = {"segmentation": 7, "depth": 1}
    standard_sizes = (SIZE, (256, 512))
    reference_size = SIZE
    protocols = {"segnet_mtan": _SEGNET, "resnet50_aspp": _RESNET}
    # class-level values describe the default (segnet_mtan) setting; instances set their own
    protocol = _SEGNET.protocol
    stl_reference = _SEGNET.stl_reference
    stl_reference_source = _SEGNET.stl_source
    splits = ("train", "test")
    per_batch_group = {"segnet_mtan": 8, "resnet50_aspp": 64}
    options = {
        "model": "segnet_mtan",
        "attention_shared": False,
        "metrics_mode": None,
        "pretrained_path": None,
        "augment": None,
        "width": 1.0,
        "val_size": 0,
        "num_classes": 7,
    }

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
        num_classes: int = 7,
    ):
        if isinstance(num_classes, bool) or num_classes not in CLASS_CHOICES:
            raise ValueError(f"num_classes must be one of {list(CLASS_CHOICES)}, got {num_classes!r}")
        super().__init__(
            root, model=model, attention_shared=attention_shared, metrics_mode=metrics_mode,
            pretrained_path=pretrained_path, augment=augment, width=width, val_size=val_size,
            num_classes=num_classes,
        )

    def modalities(self) -> tuple[Modality, ...]:
        return (
            Modality("image", "image", 3, "float"),
            Modality("segmentation", f"label_{self.num_classes}", None, "label"),
            Modality("depth", "depth", 1, "float"),
        )

    def layout(self) -> str:
        n = self.num_classes
        return (
            f"  <root>/train/{{image,label_{n},depth}}/<i>.npy  (i = 0…N-1, same set per folder)\n"
            f"  <root>/val/{{image,label_{n},depth}}/<i>.npy    (the test split)\n"
            f"  image H×W×3 float, label_{n} H×W (0…{n - 1}, -1 = ignore), depth H×W×1 float\n"
            "  (inverse depth, 0 = invalid); the MTAN release is 128×256"
        )
