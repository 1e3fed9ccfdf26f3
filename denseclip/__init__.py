"""denseclip: language-guided dense prediction with context-aware prompting (Rao et al., CVPR 2022).

    import denseclip
    model = denseclip.build_model("denseclip-rn50-ade20k")            # preset name or DenseCLIPConfig
    model = denseclip.load_checkpoint("run/model.safetensors")          # ours, a Hub repo, or the authors' .pth
    r = denseclip.predict(model, "photo.jpg", mode="slide")             # r.labels (H, W), r.probs (K, H, W)
"""

from .config import DenseCLIPConfig, TestConfig, get_preset, list_presets
from .encoders import CLIPResNetEncoder, CLIPViTEncoder, EncoderOutput, TimmEncoder
from .evaluation import evaluate
from .inference import SegmentationResult, predict, slide_windows
from .prompting import ContextDecoder, ContextTextEncoder, PreModelPrompter, tokenize_class_names
from .segmentor import DenseCLIP, build_model, score_maps
from .weights import WeightsUnavailableError, create_clip, load_checkpoint, save_checkpoint

__version__ = "0.1.0"

# Imported on first use: zero-shot pulls in open_clip's tokenizer, detection pulls in torchvision (~4 s).
_LAZY = {
    "ZeroShotSegmenter": "zeroshot", "ZeroShotResult": "zeroshot", "BACKGROUND": "zeroshot",
    "detect": "detection", "build_detector": "detection", "load_detector": "detection",
    "DetectionConfig": "detection", "DetectionResult": "detection", "DenseCLIPDetector": "detection",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'denseclip' has no attribute {name!r}")

__all__ = [
    "DenseCLIPConfig", "TestConfig", "get_preset", "list_presets",
    "CLIPResNetEncoder", "CLIPViTEncoder", "EncoderOutput", "TimmEncoder",
    "SegmentationResult", "predict", "slide_windows", "evaluate",
    "ContextDecoder", "ContextTextEncoder", "PreModelPrompter", "tokenize_class_names",
    "DenseCLIP", "build_model", "score_maps",
    "WeightsUnavailableError", "create_clip", "load_checkpoint", "save_checkpoint",
    *_LAZY,
]
