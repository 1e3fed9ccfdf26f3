"""A DenseCLIP backbone for torchvision detectors: CLIP ResNet + context-aware prompting + FPN.

Follow a tensor (the authors' DenseCLIP_RetinaNet / DenseCLIP_MaskRCNN `extract_feat`):
    images (B,3,H,W) -> CLIP ResNet -> C2..C5, dense z (B,D,H/32,W/32), global z_g (B,D)
    t' = prompting(z_g, z) = t + gamma * context_decoder(t, [z_g; z])    (B, K, D)
    S  = normalize(z) . normalize(t')^T / tau                              (B, K, H/32, W/32)   score maps
    C5' = cat(C5, S)
    RetinaNet:  FPN(C3, C4, C5') -> P3..P5, P6 = conv(C5'), P7 = conv(relu(P6))   (add_extra_convs='on_input';
                mmdetection's P7 = conv(P6), see detection/mmdet.py)
    Mask R-CNN: FPN(C2, C3, C4, C5') -> P2..P5, P6 = maxpool(P5)
`forward(x)` returns an OrderedDict of `out_channels`-channel maps, as torchvision's detectors want, in
float32 even from bfloat16 weights (torchvision makes anchors in their dtype; see heads_in_weights_dtype).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from ..config import DetectionConfig
from ..encoders import CLIPResNetEncoder
from ..prompting import ContextPrompting

LOW_PRECISION = (torch.bfloat16, torch.float16)


def full_precision(x: torch.Tensor) -> torch.Tensor:
    """float32 for a bfloat16 / float16 tensor; any other tensor as it is (float64 stays float64)."""
    return x.float() if x.dtype in LOW_PRECISION else x


class DenseCLIPBackbone(nn.Module):
    """CLIP ResNet stage features (+ pixel-text score maps on C5) -> FPN.

    encoder: a CLIPResNetEncoder (without embeddings for the baseline); prompting: the text side or None.
    Feature names: RetinaNet "p3".."p7" (strides 8..128), Mask R-CNN "p2".."p6" (strides 4..64).
    """

    def __init__(self, encoder: CLIPResNetEncoder, prompting: ContextPrompting | None, cfg: DetectionConfig):
        super().__init__()
        self.encoder, self.prompting, self.tau = encoder, prompting, cfg.tau
        channels = list(encoder.feature_channels)
        if prompting is not None:
            channels[3] += cfg.num_classes
        if cfg.detector == "retinanet":
            self.in_levels = (1, 2, 3)  # C3, C4, C5 (mmdet start_level=1)
            extra = LastLevelP6P7(channels[3], cfg.fpn_channels)
            extra.use_P5 = False  # always on the input C5 (with scores), as add_extra_convs='on_input'
            self.level_names = ("p3", "p4", "p5", "p6", "p7")
        else:
            self.in_levels = (0, 1, 2, 3)
            extra = LastLevelMaxPool()
            self.level_names = ("p2", "p3", "p4", "p5", "p6")
        self.fpn = FeaturePyramidNetwork([channels[i] for i in self.in_levels], cfg.fpn_channels,
                                         extra_blocks=extra)
        self.out_channels = cfg.fpn_channels
        self.strides = tuple(2 ** int(n[1:]) for n in self.level_names)

    def forward_with_score_map(self, x: torch.Tensor) -> tuple[OrderedDict[str, torch.Tensor],
                                                                torch.Tensor | None]:
        """x (B, 3, H, W), normalised -> (FPN features {name: (B, C, H/s, W/s)}, S / tau (B, K, H/32, W/32)
        or None for the baseline)."""
        enc = self.encoder(x)
        feats, score_map = enc.features, None
        if self.prompting is not None:
            feats, score_map, _ = self.prompting.onto_stage(enc, 3, self.tau)
        out = self.fpn(OrderedDict((str(i), feats[i]) for i in self.in_levels))
        return OrderedDict(zip(self.level_names, map(full_precision, out.values()))), score_map

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.forward_with_score_map(x)[0]
