"""NYUv2 — 13-class segmentation, depth and surface normals (3 tasks).

Data: NYU Depth V2 (Silberman et al., ECCV 2012, https://cs.nyu.edu/~fergus/datasets/nyu_depth_v2.html)
in lorenmt/mtan's preprocessed ``.npy`` release (Liu et al., CVPR 2019,
https://arxiv.org/abs/1803.10704; README Dropbox link), docs/benchmarks.md §NYUv2::

    <root>/train/{image,label,depth,normal}/<i>.npy    795 samples, i = 0 … 794
    <root>/val/{image,label,depth,normal}/<i>.npy      654 samples — the TEST split

    image  288 × 384 × 3 float      label  288 × 384, classes 0…12, −1 = void
    depth  288 × 384 × 1 float, metres, 0 = missing
    normal 288 × 384 × 3 float, unit vectors (Eigen's), 0 = missing

There is no validation split in any reference; ``val_size=k`` holds out k fixed random train
images as one. Other resolutions load (tiny fixtures are 32 × 32) with a warning and no STL
reference; see :mod:`envs._dense` for the checks, augmentation and losses.

Tasks, losses, metrics (mtan ``im2im_pred/utils.py``, CAGrad ``nyuv2/utils.py``, nash-mtl
``experiments/nyuv2/{trainer,utils}.py``, LibMTL ``examples/nyu/utils.py``):

* ``segmentation``: cross-entropy (void −1 ignored) → ``miou`` ↑, ``pixel_acc`` ↑ (fractions,
  from one confusion matrix over the split);
* ``depth``: L1 over valid pixels → ``abs_err`` ↓, ``rel_err`` ↓ (|p − g| / g);
* ``normal``: 1 − mean cosine over valid pixels → angle ``mean`` ↓, ``median`` ↓ (degrees),
  ``within_11.25`` / ``within_22.5`` / ``within_30`` ↑ (fractions of valid pixels).

Options (``envs.create("nyuv2", root=..., **options)``):

``model``            ``"segnet_mtan"`` (default; CAGrad / Nash-MTL / FAMO / IMGrad) or
                     ``"resnet50_aspp"`` (LibMTL / DB-MTL / Rep-MTL); picks the protocol below.
``attention_shared`` SegNet-MTAN only: whether the task attention masks count as shared
                     (``False`` = CAGrad/IMGrad ``shared_modules()``, default; ``True`` =
                     nash-mtl/FAMO ``shared_parameters()``). See :mod:`envs.models.segnet_mtan`.
``metrics_mode``     ``"per_batch"`` — depth and normal metrics computed per group of 2
                     consecutive test images and averaged over groups, as mtan/CAGrad/nash-mtl
                     (test batch size 2) did for every published SegNet-MTAN number and its
                     STL reference (default for segnet_mtan); ``"pooled"`` — over every valid
                     pixel of the split, as LibMTL (default for resnet50_aspp).
                     Segmentation is always pooled (confusion matrix).
``augment``          random scale-crop + flip on train (default: on for segnet_mtan, as
                     CAGrad/nash-mtl/FAMO; off for resnet50_aspp, LibMTL's ``--aug False``).
``pretrained_path``  resnet50_aspp only: a local torchvision ResNet-50 state dict; never
                     downloaded. Without it the encoder is random and the STL reference is
                     dropped.
``width``            channel multiplier of either model (1 = published; tests use 1/16).
``val_size``         number of train images held out as a validation split (default 0).

Protocols (``bench.protocol``; docs/protocols.md §3, §4):

* segnet_mtan — Adam lr 1e-4, no weight decay, StepLR(100, 0.5), 200 epochs, batch 2 (train
  and test), 3 seeds; the reported number is the mean of the test metrics over the **last 10
  epochs** (CAGrad ``nyuv2/plot.py``; nash-mtl's README says this averaging is done outside
  its code). nash-mtl gives method parameters (UW, FAMO) their own Adam lr 0.025.
* resnet50_aspp — Adam lr 1e-4, weight decay 1e-5, StepLR(100, 0.5), 200 epochs, batch 8
  (LibMTL ``examples/nyu/main.py``; training loader ``drop_last=True``, test batch 8). LibMTL
  reports the test metrics of the epoch with the best Δp against epoch 0, chosen **on the test
  set** (``_PerformanceMeter``: no validation loader). mtlx never selects on test, so this
  protocol reports the mean of the last 10 evaluations, like the SegNet one (or use
  ``val_size`` + ``selection="best_val"``); DB-MTL-style tables are optimistic by comparison.

STL references (fractions / metres / degrees, the units of the evaluator):

* segnet_mtan: 0.3830, 0.6376 | 0.6754, 0.2780 | 25.01, 19.21, 0.3014, 0.5720, 0.6915 —
  nash-mtl ``experiments/nyuv2/utils.py`` ``BASE`` ("base results from CAGrad"), CAGrad
  ``nyuv2/plot.py``, CAGrad paper Tab. 1;
* resnet50_aspp: 0.5350, 0.7539 | 0.3926, 0.1605 | 21.99, 15.16, 0.3904, 0.6500, 0.7516 —
  Rep-MTL Tab. 1 quoting DB-MTL (ImageNet-pretrained encoder, pooled metrics).

Deliberate differences from the references: labels are checked (values outside
{−1, 0…12} raise instead of being silently dropped by the metric); augmentation draws are
seeded per sample instead of from global RNGs; a batch without valid depth/normal pixels
gives loss 0 instead of NaN; mIoU averages the classes present (identical on the full test
set, where every class occurs).
"""

from __future__ import annotations

import os

from envs._dense import (
    DEPTH_METRICS,
    NORMAL_METRICS,
    SEG_METRICS,
    DenseBenchmark,
    Modality,
    ModelProtocol,
)
from envs.base import Protocol, register

NUM_CLASSES = 13
SIZE = (288, 384)

_SEGNET = ModelProtocol(
    protocol=Protocol(
        optimizer="adam", lr=1e-4, weight_decay=0.0, lr_schedule="step", step_size=100,
        gamma=0.5, batch_size=2, epochs=200, average_last=10, selection="last",
        source="CAGrad nyuv2/ and nash-mtl experiments/nyuv2/trainer.py (SegNet-MTAN): Adam "
        "1e-4, StepLR(100, 0.5), 200 epochs, batch 2; mean test metrics of the last 10 "
        "epochs, 3 seeds (docs/protocols.md §3)",
    ),
    augment=True,
    metrics_mode="per_batch",
    stl_reference={
        "segmentation": {"miou": 0.3830, "pixel_acc": 0.6376},
        "depth": {"abs_err": 0.6754, "rel_err": 0.2780},
        "normal": {"mean": 25.01, "median": 19.21, "within_11.25": 0.3014,
                   "within_22.5": 0.5720, "within_30": 0.6915},
    },
    stl_source="SegNet STL: nash-mtl experiments/nyuv2/utils.py BASE (from CAGrad), CAGrad "
    "nyuv2/plot.py, CAGrad paper Tab. 1; per-batch (2) depth/normal metrics",
)

_RESNET = ModelProtocol(
    protocol=Protocol(
        optimizer="adam", lr=1e-4, weight_decay=1e-5, lr_schedule="step", step_size=100,
        gamma=0.5, batch_size=8, epochs=200, average_last=10, selection="last",
        source="LibMTL examples/nyu/main.py (DB-MTL/Rep-MTL protocol): HPS dilated ResNet-50 "
        "(ImageNet) + ASPP, Adam 1e-4, wd 1e-5, StepLR(100, 0.5), 200 epochs, batch 8 "
        "(drop_last). LibMTL picks the best epoch on the test set; mtlx never selects on "
        "test and reports the mean of the last 10 evaluations instead",
    ),
    augment=False,
    metrics_mode="pooled",
    stl_reference={
        "segmentation": {"miou": 0.5350, "pixel_acc": 0.7539},
        "depth": {"abs_err": 0.3926, "rel_err": 0.1605},
        "normal": {"mean": 21.99, "median": 15.16, "within_11.25": 0.3904,
                   "within_22.5": 0.6500, "within_30": 0.7516},
    },
    stl_source="DeepLabV3+ STL: Rep-MTL Tab. 1 quoting DB-MTL (ImageNet-pretrained "
    "ResNet-50, pooled metrics; docs/benchmarks.md §Single-task references)",
    needs_pretrained=True,
)


@register("nyuv2")
class NYUv2(DenseBenchmark):
    """NYUv2 (MTAN release): segmentation, depth, normals; see the module docstring."""

    description = "NYUv2 13-class segmentation + depth + surface normals (MTAN .npy release)"
    tasks = ("segmentation", "depth", "normal")
    metrics = {"segmentation": SEG_METRICS, "depth": DEPTH_METRICS, "normal": NORMAL_METRICS}
    task_channels = {"segmentation": NUM_CLASSES, "depth": 1, "normal": 3}
    standard_sizes = (SIZE,)
    reference_size = SIZE
    protocols = {"segnet_mtan": _SEGNET, "resnet50_aspp": _RESNET}
    # class-level values describe the default (segnet_mtan) setting; instances set their own
    protocol = _SEGNET.protocol
    stl_reference = _SEGNET.stl_reference
    stl_reference_source = _SEGNET.stl_source
    splits = ("train", "test")
    per_batch_group = {"segnet_mtan": 2, "resnet50_aspp": 8}
    options = {
        "model": "segnet_mtan",
        "attention_shared": False,
        "metrics_mode": None,
        "pretrained_path": None,
        "augment": None,
        "width": 1.0,
        "val_size": 0,
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
    ):
        super().__init__(
            root, model=model, attention_shared=attention_shared, metrics_mode=metrics_mode,
            pretrained_path=pretrained_path, augment=augment, width=width, val_size=val_size,
        )

    def modalities(self) -> tuple[Modality, ...]:
        return (
            Modality("image", "image", 3, "float"),
            Modality("segmentation", "label", None, "label"),
            Modality("depth", "depth", 1, "float"),
            Modality("normal", "normal", 3, "float"),
        )

    def layout(self) -> str:
        return (
            "  <root>/train/{image,label,depth,normal}/<i>.npy  (i = 0…N-1, same set per folder)\n"
            "  <root>/val/{image,label,depth,normal}/<i>.npy    (the test split)\n"
            "  image H×W×3 float, label H×W (0…12, -1 = void), depth H×W×1 float (0 = missing),\n"
            "  normal H×W×3 float (0 = missing); the MTAN release is 288×384"
        )
