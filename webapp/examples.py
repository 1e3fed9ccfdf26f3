"""The examples a visitor can click: public-domain photos (examples/examples.json) for the CLIP models,
and scenes of the toy world (denseclip.data.synthetic), drawn at start into a temporary folder, for the
offline demo model, which knows only that world's five classes.

    photos = load_examples(Path("examples"))           # [{"path", "classes", "credit", "licence"}, ...]
    scenes = toy_examples(folder)                      # the same keys, files written into `folder`
"""

from __future__ import annotations

import json
from pathlib import Path

TOY_SCENES = 4
TOY_SIZE = (288, 432)  # (H, W) of a toy scene
TOY_FIRST = 3 * 10**6  # sample indices of the scenes: none of them seen in training (2e6 + i)


def load_examples(folder: Path) -> list[dict]:
    """The example photos listed in `folder`/examples.json (file -> classes, credit, licence), in order."""
    index = folder / "examples.json"
    if not index.is_file():
        return []
    entries = json.loads(index.read_text("utf-8"))
    return [{"path": str(folder / name), **entry} for name, entry in entries.items()
            if (folder / name).is_file()]


def toy_examples(folder: Path, count: int = TOY_SCENES) -> list[dict]:
    """`count` toy-world scenes that show at least four of its classes, written as PNG into `folder`."""
    from PIL import Image

    from denseclip.data.synthetic import make_sample
    from denseclip.toy import TOY_CLASSES

    folder.mkdir(parents=True, exist_ok=True)
    found, index = [], TOY_FIRST
    while len(found) < count:
        image, label = make_sample(index, 0, TOY_SIZE)
        index += 1
        if len(set(label.ravel().tolist())) < 4:
            continue
        path = folder / f"toy_world_{len(found) + 1}.png"
        Image.fromarray(image).save(path, compress_level=1)
        found.append({"path": str(path), "classes": ", ".join(TOY_CLASSES),
                      "credit": "drawn by denseclip.data.synthetic", "licence": "CC0 1.0"})
    return found
