"""Model architectures for the dense-prediction benchmarks (NYUv2, Cityscapes).

* :class:`SegNetMTAN` — SegNet + task attention (CAGrad / Nash-MTL / FAMO / IMGrad protocol);
  no single shared representation.
* :class:`ResNetASPP` — dilated ResNet-50 encoder + DeepLabV3 ASPP heads (LibMTL / DB-MTL
  protocol); the encoder output is the shared representation.
"""

from envs.models.resnet_aspp import ASPP, DeepLabHead, DilatedResNet, ResNetASPP
from envs.models.segnet_mtan import SegNetMTAN

__all__ = ["ASPP", "DeepLabHead", "DilatedResNet", "ResNetASPP", "SegNetMTAN"]
