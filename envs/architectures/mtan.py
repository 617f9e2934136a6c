"""Multi-task attention network on a ResNet encoder (docs/architectures.md §MTAN).

Liu, Johns, Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019,
https://arxiv.org/abs/1803.10704; LibMTL ``architecture/MTAN.py`` (its ResNet version).

The ResNet (conv1-bn1-relu-maxpool stem, layers 1 … 4 of blocks, c_i output channels,
expansion e = 4 for Bottleneck, 1 for BasicBlock) stays shared. For layer i, let u_i be the
output of all its blocks but the last and v_i that of the last block. Task t's attention
features are

    a^0_t = pool(f_0(m^0_t(u_0) ⊙ v_0)),
    a^i_t = f_i(m^i_t([u_i, ↓a^{i−1}_t]) ⊙ v_i)   (i = 1, 2; f_3 = identity),

with m^i_t a 1×1 conv-BN-ReLU-1×1 conv-BN-sigmoid mask (c_0 → c_0/e → c_0, then
2c_i → c_i/e → c_i), f_i a shared residual block c_i → c_{i+1} (1×1 conv + BN shortcut),
pool a 2×2 max-pool, and ↓ the same pool applied when the spatial sizes differ. a^3_t then
passes through the encoder's shared tail (Office: average pool + hidden layer) and task
t's head. LibMTL's channel list is [64, 128, 256, 512]·e; here c_i is read from the layers,
which is the same at the reference widths and lets the test-sized encoders work.

Shared parameters: the ResNet and the tail (LibMTL ``get_share_params``). Task t: its four
masks and its head. The blocks f_i are used by every task but are not in LibMTL's shared
set: they are task parameters of no single task (``all_task_parameters`` holds them, so
the engine's head-update rule applies to them). No single shared representation. With
multi-input data, ``forward(x, task)`` runs only that task's attention path, as LibMTL.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from envs.architectures.base import ArchModel, ArchSpec


def _mask(c_in: int, c_mid: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_mid, kernel_size=1, padding=0), nn.BatchNorm2d(c_mid),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_mid, c_out, kernel_size=1, padding=0), nn.BatchNorm2d(c_out), nn.Sigmoid(),
    )  # fmt: skip


def _block_type(resnet: nn.Module):
    from torchvision.models.resnet import BasicBlock, Bottleneck

    first = resnet.layer1[0]
    if isinstance(first, Bottleneck):
        return Bottleneck, 4
    if isinstance(first, BasicBlock):
        return BasicBlock, 1
    raise ValueError(f"mtan needs torchvision BasicBlock/Bottleneck layers, got {type(first)}")


def _out_channels(layer: nn.Sequential) -> int:
    last = layer[-1]
    conv = last.conv3 if hasattr(last, "conv3") else last.conv2
    return conv.out_channels


class MTAN(ArchModel):
    name = "mtan"
    title = "Multi-task attention network (ResNet)"
    paper = "Liu et al., CVPR 2019, https://arxiv.org/abs/1803.10704"
    needs = frozenset({"resnet"})

    def build(self, spec: ArchSpec) -> None:
        from torchvision.models.resnet import conv1x1

        assert spec.resnet is not None
        resnet, self.tail = spec.resnet(spec.encoder())
        block, e = _block_type(resnet)
        layers = [getattr(resnet, f"layer{i}") for i in range(1, 5)]
        ch = [_out_channels(layer) for layer in layers]
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.layers = nn.ModuleList([nn.ModuleList([layer[:-1], layer[-1]]) for layer in layers])
        self.masks = nn.ModuleDict({
            t: nn.ModuleList([_mask(ch[0], ch[0] // e, ch[0])]
                             + [_mask(2 * ch[i], ch[i] // e, ch[i]) for i in range(1, 4)])
            for t in self.tasks
        })
        self.blocks = nn.ModuleList()
        for i in range(3):
            planes = ch[i + 1] // e
            down = nn.Sequential(conv1x1(ch[i], e * planes), nn.BatchNorm2d(e * planes))
            self.blocks.append(block(ch[i], planes, downsample=down))
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)

    def representations(self, x: Tensor, tasks: Sequence[str]):
        h = self.stem(x)
        att: dict[str, Tensor] = {}
        for i, (body, last) in enumerate(self.layers):
            u = body(h)
            h = last(u)
            for t in tasks:
                mask = self.masks[t][i]
                if i == 0:
                    a = mask(u) * h
                else:
                    prev = att[t]
                    if prev.shape[-2:] != u.shape[-2:]:
                        prev = self.pool(prev)
                    a = mask(torch.cat([u, prev], dim=1)) * h
                if i < 3:
                    a = self.blocks[i](a)
                att[t] = self.pool(a) if i == 0 else a
        return {t: self.tail(att[t]) for t in tasks}, None

    def shared_modules(self) -> list[nn.Module]:
        return [self.stem, self.layers, self.tail]

    def task_modules(self, task: str) -> list[nn.Module]:
        return [self.masks[task]]
