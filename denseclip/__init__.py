"""denseclip: language-guided dense prediction with context-aware prompting (Rao et al., CVPR 2022).

    import denseclip
    model = denseclip.build_model("denseclip-rn50-ade20k")            # preset name or DenseCLIPConfig
    model = denseclip.load_checkpoint("run/final")                  # ours, a Hub repo, or the authors' .pth
    r = denseclip.predict(model, "photo.jpg")                          # r.labels (H, W), r.probs (K, H, W)
    zs = denseclip.ZeroShotSegmenter.from_pretrained("ViT-B-16")       # training-free maps for any names
    det = denseclip.load_detector("run/final"); r = denseclip.detect(det, "photo.jpg")
"""

from .checkpoints import save_checkpoint
from .clip import create_clip
from .config import DenseCLIPConfig, DetectionConfig, PromptConfig, TestConfig, get_preset, list_presets
from .encoders import CLIPResNetEncoder, CLIPViTEncoder, EncoderOutput, TimmEncoder
from .evaluation import evaluate
from .hub import WeightsUnavailableError
from .inference import SegmentationResult, predict
from .ops import score_maps
from .prompting import ContextDecoder, ContextPrompting, ContextTextEncoder, tokenize_class_names
from .segmentor import DenseCLIP, build_model, load_checkpoint

__version__ = "0.2.0"

# Imported on first use: zero-shot pulls in open_clip's tokenizer, detection pulls in torchvision (~4 s).
_LAZY = {
    "ZeroShotSegmenter": "zeroshot", "ZeroShotResult": "zeroshot",
    "detect": "detection", "build_detector": "detection", "load_detector": "detection",
    "DetectionResult": "detection", "DenseCLIPDetector": "detection",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'denseclip' has no attribute {name!r}")


__all__ = [
    "save_checkpoint", "create_clip", "DenseCLIPConfig", "DetectionConfig", "PromptConfig", "TestConfig",
    "get_preset", "list_presets", "CLIPResNetEncoder", "CLIPViTEncoder", "EncoderOutput", "TimmEncoder",
    "evaluate", "WeightsUnavailableError", "SegmentationResult", "predict", "score_maps", "ContextDecoder",
    "ContextPrompting", "ContextTextEncoder", "tokenize_class_names", "DenseCLIP", "build_model",
    "load_checkpoint", *_LAZY,
]
