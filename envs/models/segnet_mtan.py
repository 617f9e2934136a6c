"""SegNet + MTAN (Multi-Task Attention Network) for dense prediction.

Liu, Johns, Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019,
https://arxiv.org/abs/1803.10704. Architecture as in ``lorenmt/mtan``
``im2im_pred/model_segnet_mtan.py`` and its copies used for every published NYUv2 /
Cityscapes number of CAGrad, Nash-MTL, FAMO and IMGrad (CAGrad ``nyuv2/model_segnet_mt.py``,
nash-mtl ``experiments/nyuv2/models.py``, FAMO ``experiments/cityscapes/models.py``).

Structure (filters f = [64, 128, 256, 512, 512], all blocks conv3×3-BN-ReLU):

* global SegNet: 5 encoder stages (block + conv block, max-pool with indices) and 5 decoder
  stages (max-unpool, block + conv block) — shared;
* per stage, a convolutional block of the attention path (``att_enc`` / ``att_dec``:
  the reference's ``encoder_block_att`` / ``decoder_block_att``) — shared (its weights are
  used by every task's attention path);
* per task and stage, a soft-attention mask 1×1 conv-BN-ReLU-1×1 conv-BN-sigmoid applied
  to the shared features (``encoder_att`` / ``decoder_att``) — task-specific or shared,
  see ``attention_shared``;
* per task, a head conv3×3(f0→f0) then conv1×1(f0→out), no BN/ReLU between.

Init: Xavier-normal conv weights, zero biases, BN weight 1 bias 0 (reference).

Outputs: raw segmentation logits (the reference applies ``log_softmax`` and NLL; we return
logits and the benchmark uses cross-entropy, which is the same function), raw depth, and
L2-normalised normals (``F.normalize``; the reference divides by the norm without an epsilon,
identical except for an exactly-zero prediction).

``attention_shared`` (docs/benchmarks.md §Shared attention): CAGrad/IMGrad
``shared_modules()`` leave the task attention masks out (``False``, they are updated like
heads); nash-mtl/FAMO ``shared_parameters()`` = every parameter whose name lacks "pred", so the
masks are shared (``True``). The choice changes the Gramians, so it is explicit.

Shared representation: **none**. Each task's head reads its own attended decoder features,
and the shared parameters also receive gradient through every task's attention path (the
shared ``att_enc``/``att_dec`` blocks run on task-specific activations, and the masks
multiply the shared features at all 10 stages). No single tensor z exists with
∇_θ L_t = (∂z/∂θ)ᵀ ∇_z L_t for all shared θ, so representation-level methods are not valid
for this model and ``features`` does not offer ``"representation"``; ``forward`` returns
``rep=None``. (nash-mtl passes the tuple of per-task attended features as "representation";
their per-task gradients live in disjoint blocks, so a Gramian built from them is diagonal.)

``width`` scales every channel count (tests use e.g. 1/16); width 1 is the published model
(about 44M parameters for NYUv2).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from envs.base import MTLModel

BASE_FILTERS = (64, 128, 256, 512, 512)


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _att_mask(c_in: int, c_mid: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_mid, kernel_size=1),
        nn.BatchNorm2d(c_mid),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_mid, c_out, kernel_size=1),
        nn.BatchNorm2d(c_out),
        nn.Sigmoid(),
    )


def _head(c: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c, c, kernel_size=3, padding=1), nn.Conv2d(c, out, kernel_size=1))


class _TaskAttention(nn.Module):
    """One task's 5 encoder and 5 decoder attention masks (``encoder_att[t]``/``decoder_att[t]``).

    ``dec[j]`` is the mask of decoder stage j counted from the full-resolution end, as the
    reference indexes ``decoder_att[t][-j-1]`` while walking the decoder from the bottom."""

    def __init__(self, f: tuple[int, ...]):
        super().__init__()
        self.enc = nn.ModuleList(
            [_att_mask(f[0], f[0], f[0])]
            + [_att_mask(2 * f[i + 1], f[i + 1], f[i + 1]) for i in range(4)]
        )
        self.dec = nn.ModuleList(
            [_att_mask(2 * f[0], f[0], f[0])]
            + [_att_mask(f[i + 1] + f[i], f[i], f[i]) for i in range(4)]
        )


class SegNetMTAN(MTLModel):
    """SegNet-MTAN with one attention branch and head per task.

    ``task_channels``: output channels per task in task order, e.g.
    ``{"segmentation": 13, "depth": 1, "normal": 3}``; a task named ``"normal"`` gets
    L2-normalised outputs. Input H and W must be divisible by 32 (five 2× poolings)."""

    features = frozenset()  # no valid single shared representation (module docstring)

    def __init__(
        self,
        task_channels: Mapping[str, int],
        *,
        attention_shared: bool = False,
        width: float = 1.0,
        normalize: tuple[str, ...] = ("normal",),
    ):
        super().__init__()
        if not task_channels:
            raise ValueError("task_channels is empty: give {task: output channels}")
        if not (isinstance(width, (int, float)) and 0 < width <= 4):
            raise ValueError(f"width must be in (0, 4], got {width!r}")
        if not isinstance(attention_shared, bool):
            raise ValueError(f"attention_shared must be a bool, got {attention_shared!r}")
        self.tasks = tuple(task_channels)
        self.attention_shared = attention_shared
        self.normalize = tuple(t for t in normalize if t in task_channels)
        f = tuple(max(1, round(c * width)) for c in BASE_FILTERS)
        self.filters = f

        # global SegNet (reference: encoder_block, conv_block_enc, decoder_block, conv_block_dec)
        self.enc_block = nn.ModuleList(
            [_conv_block(3, f[0])] + [_conv_block(f[i], f[i + 1]) for i in range(4)]
        )
        self.enc_conv = nn.ModuleList(
            [_conv_block(f[0], f[0]), _conv_block(f[1], f[1])]
            + [nn.Sequential(_conv_block(f[i], f[i]), _conv_block(f[i], f[i])) for i in (2, 3, 4)]
        )
        # decoder modules indexed by the resolution level they output (0 = full resolution)
        self.dec_block = nn.ModuleList(
            [_conv_block(f[0], f[0])] + [_conv_block(f[i + 1], f[i]) for i in range(4)]
        )
        self.dec_conv = nn.ModuleList(
            [_conv_block(f[0], f[0]), _conv_block(f[0], f[0])]
            + [nn.Sequential(_conv_block(f[i], f[i]), _conv_block(f[i], f[i])) for i in (1, 2, 3)]
        )
        # shared conv blocks of the attention path (encoder_block_att / decoder_block_att)
        self.att_enc = nn.ModuleList(
            [_conv_block(f[i], f[i + 1]) for i in range(4)] + [_conv_block(f[4], f[4])]
        )
        self.att_dec = nn.ModuleList(
            [_conv_block(f[0], f[0])]
            + [_conv_block(f[i + 1], f[i]) for i in range(3)]
            + [_conv_block(f[4], f[4])]
        )
        self.attention = nn.ModuleDict({t: _TaskAttention(f) for t in self.tasks})
        self.heads = nn.ModuleDict({t: _head(f[0], c) for t, c in task_channels.items()})
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ----------------------------------------------------------------- parameter split
    def _shared_modules(self) -> list[nn.Module]:
        mods: list[nn.Module] = [self.enc_block, self.enc_conv, self.dec_block, self.dec_conv,
                                 self.att_enc, self.att_dec]
        if self.attention_shared:
            mods.append(self.attention)
        return mods

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for m in self._shared_modules() for p in m.parameters()]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        params = list(self.heads[task].parameters())
        if not self.attention_shared:
            params = list(self.attention[task].parameters()) + params
        return params

    # ----------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> tuple[dict[str, Tensor], None]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"SegNet-MTAN expects images of shape (B, 3, H, W), got {tuple(x.shape)}")
        if x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ValueError(
                f"SegNet-MTAN needs H and W divisible by 32 (five 2x poolings), got "
                f"{tuple(x.shape[-2:])}"
            )
        # shared encoder: pre[i] = block output, post[i] = conv-block output (pooled onward)
        pre, post, indices = [], [], []
        h = x
        for i in range(5):
            a = self.enc_block[i](h)
            b = self.enc_conv[i](a)
            h, idx = F.max_pool2d(b, kernel_size=2, stride=2, return_indices=True)
            pre.append(a)
            post.append(b)
            indices.append(idx)
        # shared decoder, from the bottom (level 4) to full resolution (level 0)
        up, dec = {}, {}
        for lvl in range(4, -1, -1):
            u = F.max_unpool2d(h, indices[lvl], kernel_size=2, stride=2)
            h = self.dec_conv[lvl](self.dec_block[lvl](u))
            up[lvl], dec[lvl] = u, h

        preds: dict[str, Tensor] = {}
        for t in self.tasks:
            att = self.attention[t]
            # task encoder attention: mask the shared conv-block output, refine, pool
            s = None
            for i in range(5):
                mask = att.enc[i](pre[i] if s is None else torch.cat((pre[i], s), dim=1))
                s = F.max_pool2d(self.att_enc[i](mask * post[i]), kernel_size=2, stride=2)
            # task decoder attention, bottom to top
            for lvl in range(4, -1, -1):
                s = F.interpolate(s, scale_factor=2, mode="bilinear", align_corners=True)
                s = self.att_dec[lvl](s)
                mask = att.dec[lvl](torch.cat((up[lvl], s), dim=1))
                s = mask * dec[lvl]
            out = self.heads[t](s)
            if t in self.normalize:
                out = F.normalize(out, p=2, dim=1)
            preds[t] = out
        return preds, None
