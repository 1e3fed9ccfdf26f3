"""Visual encoders: CLIP ResNet, CLIP ViT, timm backbones -> stage features + dense embeddings."""

from .base import EncoderOutput, resize_pos_embed
from .clip_resnet import CLIPResNetEncoder
from .clip_vit import CLIPViTEncoder
from .timm_backbone import TimmEncoder

__all__ = ["EncoderOutput", "resize_pos_embed", "CLIPResNetEncoder", "CLIPViTEncoder", "TimmEncoder",
           "encoder_from_clip"]


def encoder_from_clip(visual, input_resolution=None, embeddings: bool = True, **vit_kwargs):
    """Wrap an open_clip image tower (`clip_model.visual`) as the matching dense encoder.

    `vit_kwargs` (out_indices, official_cls, with_necks, drop_path_rate) apply to ViT towers only."""
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.transformer import VisionTransformer

    if isinstance(visual, ModifiedResNet):
        return CLIPResNetEncoder(visual, input_resolution, embeddings=embeddings)
    if isinstance(visual, VisionTransformer):
        return CLIPViTEncoder(visual, input_resolution, embeddings=embeddings, **vit_kwargs)
    raise TypeError(f"unsupported open_clip image tower {type(visual).__name__}: DenseCLIP wraps "
                    "ModifiedResNet (RN50, RN101, ...) and VisionTransformer (ViT-B-16, ...); for other "
                    "backbones use a timm model name as `backbone`")
