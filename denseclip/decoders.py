"""Dense heads: the FPN neck and the semantic-FPN head (Kirillov et al., 2019), mmseg-compatible.

Parameter names follow mmseg (`lateral_convs.N.conv`, `fpn_convs.N.conv`, `scale_heads.N.M.conv/.bn`,
`conv_seg`) so the DenseCLIP authors' checkpoints load without renaming.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ConvNormAct(nn.Module):
    """Conv2d (+ BatchNorm + ReLU): mmcv's ConvModule with the same attribute names (conv, bn)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, norm: bool = False, act: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=not norm)
        self.bn = nn.BatchNorm2d(out_ch) if norm else None
        self.act = nn.ReLU(inplace=True) if act else None
        # mmcv initialises ConvModule convs with kaiming (fan_out, relu)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x) if self.act is not None else x


class FPN(nn.Module):
    """Feature pyramid: 1x1 laterals, nearest-neighbour top-down sum, 3x3 output convs.

    in: 4 features (B, C_i, H_i, W_i) -> out: 4 features (B, out_channels, H_i, W_i).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256):
        super().__init__()
        self.lateral_convs = nn.ModuleList([ConvNormAct(c, out_channels, 1) for c in in_channels])
        self.fpn_convs = nn.ModuleList([ConvNormAct(out_channels, out_channels, 3) for _ in in_channels])
        for m in self.modules():  # mmseg FPN: xavier-uniform convs
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(feats) != len(self.lateral_convs):
            raise ValueError(f"FPN expects {len(self.lateral_convs)} features, got {len(feats)}")
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        for i in range(len(laterals) - 1, 0, -1):
            up = F.interpolate(laterals[i], size=laterals[i - 1].shape[2:], mode="nearest")
            laterals[i - 1] = laterals[i - 1] + up
        return [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)]


class FPNHead(nn.Module):
    """Semantic-FPN head: per level 3x3 conv+BN+ReLU and x2 bilinear upsampling down to the finest
    stride, summed, dropout, 1x1 classifier. (B, C, H/4, W/4) logits for strides (4, 8, 16, 32)."""

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int,
                 feature_strides: Sequence[int] = (4, 8, 16, 32), dropout: float = 0.1):
        super().__init__()
        self.feature_strides = tuple(feature_strides)
        self.scale_heads = nn.ModuleList()
        for i, stride in enumerate(self.feature_strides):
            length = max(1, int(math.log2(stride) - math.log2(self.feature_strides[0])))
            layers: list[nn.Module] = []
            for k in range(length):
                cin = in_channels[i] if k == 0 else channels
                layers.append(ConvNormAct(cin, channels, 3, norm=True, act=True))
                if stride != self.feature_strides[0]:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)  # mmseg's cls_seg init
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        out = self.scale_heads[0](feats[0])
        for i in range(1, len(self.feature_strides)):
            # sizes can differ by one pixel for odd inputs: resize to the finest level like mmseg
            out = out + F.interpolate(self.scale_heads[i](feats[i]), size=out.shape[2:], mode="bilinear",
                                      align_corners=False)
        return self.conv_seg(self.dropout(out))
