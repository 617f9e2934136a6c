"""Dilated ResNet-50 (output stride 8) shared encoder + one DeepLabV3 ASPP head per task.

The hard-parameter-sharing model of the LibMTL / DB-MTL / Rep-MTL NYUv2 and Cityscapes
protocol (LibMTL ``examples/nyu/main.py``: ``resnet_dilated('resnet50')`` encoder,
``DeepLabHead(2048, out)`` decoders; docs/benchmarks.md §NYUv2).

Encoder: torchvision's ResNet-50 layout with ``replace_stride_with_dilation=[False, True,
True]`` — layer3 and layer4 keep stride 1 and use dilation 2 and 4 (the first block of each
keeps the previous dilation), so the output has 2048 channels at 1/8 of the input size. This
is the same network as LibMTL's ``ResnetDilated(dilate_scale=8)`` (its ``_nostride_dilate``
sets exactly these strides, dilations and paddings). The encoder is assembled here from
torchvision's own ``Bottleneck`` blocks with torchvision's ``_make_layer`` logic so that one
``width`` multiplier can shrink it for tests; at ``width=1`` its parameter names and shapes are
those of ``torchvision.models.resnet50`` without ``fc`` (tested), so torchvision-format
checkpoints load as they are. avgpool/fc are dropped (not used for dense prediction).

Head (LibMTL ``DeepLabHead``): ASPP(1×1 conv, three 3×3 convs with dilation 12/24/36, image
pooling; 256 channels each, BN-ReLU) → concat → 1×1 projection 256 + BN-ReLU + Dropout(0.5)
→ 3×3 conv 256 (no bias) + BN-ReLU → 1×1 conv to the task's channels → bilinear upsampling
(``align_corners=True``) to the input size (LibMTL upsamples to the fixed 288×384 /
128×256; we use the input's size, which is the same at the published resolution).

Weights: random init by default (torchvision's init: Kaiming-normal fan-out convs, BN 1/0).
LibMTL uses ImageNet-pretrained weights; here they are loaded ONLY from a local file the user
gives (``pretrained_path``: a torchvision ResNet-50 state dict, e.g. ``resnet50-0676ba61.pth``
or ``resnet50-11ad3fa6.pth``), never downloaded. Without one a warning is logged: the
published DeepLab-protocol numbers (and its STL reference) assume pretraining.

Outputs: raw segmentation logits, raw depth, L2-normalised normals (LibMTL normalises inside
the normal loss/metric; doing it in the model is the same function).

Shared representation: the encoder output z (B, 2048·width, H/8, W/8). Every shared
parameter lies before z and every head reads only z, so ∇_θ L_t = (∂z/∂θ)ᵀ ∇_z L_t exactly
and representation-level methods are valid (LibMTL ``rep_grad=True`` uses this same tensor).

Caveat from the reference head: the ASPP image-pooling branch applies BatchNorm to a 1×1 map,
which fails in training mode for a per-process batch of 1.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from envs.base import MTLModel

log = logging.getLogger(__name__)

RESNET50_LAYERS = (3, 4, 6, 3)
ASPP_RATES = (12, 24, 36)


class DilatedResNet(nn.Module):
    """ResNet-50-style Bottleneck encoder with output stride 8 and a channel multiplier."""

    def __init__(self, layers: Sequence[int] = RESNET50_LAYERS, width: float = 1.0):
        super().__init__()
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ValueError(f"layers must be 4 positive block counts, got {tuple(layers)}")
        planes = [max(1, round(c * width)) for c in (64, 128, 256, 512)]
        self.inplanes = planes[0]
        self.dilation = 1
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(planes[0], layers[0])
        self.layer2 = self._make_layer(planes[1], layers[1], stride=2)
        self.layer3 = self._make_layer(planes[2], layers[2], stride=2, dilate=True)
        self.layer4 = self._make_layer(planes[3], layers[3], stride=2, dilate=True)
        self.out_channels = planes[3] * 4  # torchvision Bottleneck.expansion
        for m in self.modules():  # torchvision ResNet init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilate: bool = False):
        # imported here: torchvision takes seconds to import and most runs never need it
        from torchvision.models.resnet import Bottleneck, conv1x1

        # torchvision ResNet._make_layer: a dilated layer trades its stride for dilation,
        # and its first block keeps the previous dilation.
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * Bottleneck.expansion, stride),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        mods = [Bottleneck(self.inplanes, planes, stride, downsample, dilation=previous_dilation)]
        self.inplanes = planes * Bottleneck.expansion
        mods += [Bottleneck(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _conv_bn_relu(c_in: int, c_out: int, k: int, dilation: int = 1) -> list[nn.Module]:
    pad = 0 if k == 1 else dilation
    return [
        nn.Conv2d(c_in, c_out, k, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    ]


class _ASPPPooling(nn.Sequential):
    def __init__(self, c_in: int, c_out: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), *_conv_bn_relu(c_in, c_out, 1))

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(super().forward(x), size=x.shape[-2:], mode="bilinear",
                             align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabV3; LibMTL ``ASPP``)."""

    def __init__(self, c_in: int, c_out: int = 256, rates: Sequence[int] = ASPP_RATES):
        super().__init__()
        self.convs = nn.ModuleList(
            [nn.Sequential(*_conv_bn_relu(c_in, c_out, 1))]
            + [nn.Sequential(*_conv_bn_relu(c_in, c_out, 3, r)) for r in rates]
            + [_ASPPPooling(c_in, c_out)]
        )
        self.project = nn.Sequential(
            *_conv_bn_relu((len(rates) + 2) * c_out, c_out, 1), nn.Dropout(0.5)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


class DeepLabHead(nn.Sequential):
    """ASPP → 3×3 conv-BN-ReLU → 1×1 conv to ``c_out`` (LibMTL ``DeepLabHead``)."""

    def __init__(self, c_in: int, c_out: int, channels: int = 256):
        super().__init__(
            ASPP(c_in, channels),
            *_conv_bn_relu(channels, channels, 3),
            nn.Conv2d(channels, c_out, 1),
        )


class ResNetASPP(MTLModel):
    """Hard parameter sharing: dilated ResNet encoder (shared) + ASPP head per task."""

    features = frozenset({"representation"})

    def __init__(
        self,
        task_channels: Mapping[str, int],
        *,
        width: float = 1.0,
        layers: Sequence[int] = RESNET50_LAYERS,
        pretrained_path: str | os.PathLike | None = None,
        normalize: tuple[str, ...] = ("normal",),
    ):
        super().__init__()
        if not task_channels:
            raise ValueError("task_channels is empty: give {task: output channels}")
        if not (isinstance(width, (int, float)) and 0 < width <= 4):
            raise ValueError(f"width must be in (0, 4], got {width!r}")
        self.tasks = tuple(task_channels)
        self.normalize = tuple(t for t in normalize if t in task_channels)
        self.encoder = DilatedResNet(layers, width)
        head_ch = max(1, round(256 * width))
        self.heads = nn.ModuleDict(
            {t: DeepLabHead(self.encoder.out_channels, c, head_ch) for t, c in task_channels.items()}
        )
        if pretrained_path is not None:
            if width != 1 or tuple(layers) != RESNET50_LAYERS:
                raise ValueError(
                    "pretrained_path needs the full ResNet-50 (width=1, layers=(3, 4, 6, 3)); "
                    f"got width={width}, layers={tuple(layers)}"
                )
            load_resnet50_weights(self.encoder, pretrained_path)
        else:
            log.warning(
                "ResNetASPP: no pretrained_path given, the ResNet encoder is randomly "
                "initialised; the LibMTL/DB-MTL protocol and its STL reference use "
                "ImageNet-pretrained weights (pass a local torchvision resnet50 .pth file)"
            )

    def forward(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"ResNetASPP expects images of shape (B, 3, H, W), got {tuple(x.shape)}")
        z = self.encoder(x)
        preds: dict[str, Tensor] = {}
        for t in self.tasks:
            out = F.interpolate(self.heads[t](z), size=x.shape[-2:], mode="bilinear",
                                align_corners=True)
            if t in self.normalize:
                out = F.normalize(out, p=2, dim=1)
            preds[t] = out
        return preds, z


def load_resnet50_weights(encoder: DilatedResNet, path: str | os.PathLike) -> None:
    """Load a local torchvision ResNet-50 checkpoint into ``encoder`` (``fc.*`` ignored).

    Accepts a plain state dict or one nested under ``"state_dict"``/``"model"``, with or
    without a ``"module."`` prefix. Never downloads anything."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(
            f"pretrained_path {path!r} is not a file; give a local torchvision resnet50 "
            "state-dict file (weights are never downloaded)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any unreadable checkpoint the same way
        raise ValueError(f"could not read pretrained weights from {path!r}: {e}") from e
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path!r} does not hold a state dict (got {type(obj).__name__})")
    sd = {k.removeprefix("module."): v for k, v in obj.items()}
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    own = encoder.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    wrong = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path!r} is not a torchvision ResNet-50 state dict: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}"
        )
    encoder.load_state_dict(sd, strict=True)
    log.info("ResNetASPP: loaded encoder weights from %s", path)
