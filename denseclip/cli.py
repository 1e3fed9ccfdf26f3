"""`denseclip-scoremaps`: per-class pixel-text score-map statistics for one image, from the command line.

    denseclip-scoremaps photo.jpg --classes "sky, tree, person, road"            # zero-shot CLIP RN50
    denseclip-scoremaps photo.jpg --classes "sky, tree" --model ViT-B-16 --figure maps.png
    denseclip-scoremaps photo.jpg --classes "sky, tree" --model ViT-B-16 --method proxyclip --pamr
    denseclip-scoremaps photo.jpg --checkpoint run/final                          # a trained DenseCLIP
    denseclip-scoremaps photo.jpg --classes "a, b" --tiny                         # offline: random tiny model
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def _zero_shot(args):
    from .zeroshot import ZeroShotSegmenter

    options = {"method": args.method, "pamr_steps": 10 if args.pamr else 0}
    if args.tiny:
        from .clip import create_clip
        from .config import TINY_RN_ARCH

        clip = create_clip("tiny", None, arch=TINY_RN_ARCH)
        zs = ZeroShotSegmenter(clip, "tiny", pretrained=None, **options)
    else:
        zs = ZeroShotSegmenter.from_pretrained(args.model, args.pretrained, **options)
    print(zs.describe(), file=sys.stderr)
    r = zs.predict(args.image, args.classes, templates=args.templates, max_side=args.max_side)
    return r.class_names, r.scores.numpy(), r.labels.numpy(), r.coverage(), "cosine", r.seconds


def _checkpoint(args):
    from .inference import predict
    from .segmentor import load_checkpoint

    model = load_checkpoint(args.checkpoint)
    r = predict(model, args.image)
    return r.class_names, r.probs.numpy(), r.labels.numpy(), r.coverage(), "probability", r.seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="denseclip-scoremaps", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", help="image file (any format PIL reads)")
    p.add_argument("--classes", default="",
                   help="class names, comma or newline separated, or a dataset key (ade20k)")
    p.add_argument("--model", default="RN50",
                   help="open_clip model for zero-shot maps (RN50, RN101, ViT-B-16, ...)")
    p.add_argument("--pretrained", default="openai", help="open_clip tag or local weights file")
    p.add_argument("--checkpoint", help="a DenseCLIP checkpoint (file, folder, Hub repo, the authors' .pth)")
    p.add_argument("--templates", default="simple", help="prompt templates: single, simple, imagenet")
    p.add_argument("--method", default=None,
                   help="zero-shot method (default: naclip for ViTs, maskclip for ResNets); see "
                        "denseclip.zeroshot.describe_methods()")
    p.add_argument("--pamr", action="store_true", help="refine the zero-shot maps with PAMR (10 steps)")
    p.add_argument("--tiny", action="store_true",
                   help="random tiny model (offline checks; maps are meaningless)")
    p.add_argument("--max-side", type=int, default=2048, help="decode the image at most this large")
    p.add_argument("--top", type=int, default=20, help="rows to print")
    p.add_argument("--figure", help="save a score-map figure (PNG) here")
    args = p.parse_args(argv)
    from .hub import WeightsUnavailableError
    from .vocab import DATASET_CLASSES, get_class_names

    try:
        if args.checkpoint:
            names, maps, labels, cov, kind, seconds = _checkpoint(args)
        else:
            if not args.classes.strip():
                p.error("--classes is required for zero-shot score maps")
            spec = args.classes.strip()
            single = "," not in spec and "\n" not in spec and spec.lower() not in DATASET_CLASSES
            args.classes = get_class_names([spec] if single else spec)  # one name: a class, not a dataset
            names, maps, labels, cov, kind, seconds = _zero_shot(args)
    except (ValueError, FileNotFoundError, WeightsUnavailableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    order = np.argsort(-cov, kind="stable")[: args.top]
    width = max(len("class"), *(len(names[i]) for i in order))
    print(f"{'class':<{width}}  {'pixels %':>8}  {kind + ' min':>16}  {'mean':>7}  {'max':>7}")
    for i in order:
        m = maps[i]
        print(f"{names[i]:<{width}}  {100 * cov[i]:8.2f}  {m.min():16.3f}  {m.mean():7.3f}  {m.max():7.3f}")
    size = f"{labels.shape[1]}x{labels.shape[0]}"
    print(f"{len(names)} classes, image {size}, {seconds:.2f} s", file=sys.stderr)
    if args.figure:
        from .data.transforms import load_image
        from .viz import save_figure, scoremap_figure

        img = load_image(args.image, args.max_side)
        save_figure(scoremap_figure(img, maps, list(names), sort_by=cov), args.figure)
        print(f"figure written to {args.figure}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
