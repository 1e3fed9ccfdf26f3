"""Draw the synthetic scenes of the tutorials and CLI tests (CC0): `python examples/make_examples.py`.

(The app's own examples are the real photos listed in examples.json.)

Every pixel comes from this script (PIL shapes, gradients and seeded noise), so the images carry no
third-party rights; they are dedicated to the public domain (CC0 1.0), like this script.
Each scene is a 640x480 JPEG under 100 KB. The class lists the app suggests for them (EXAMPLES) are
written to classes.json next to the images.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

W, H = 640, 480
HERE = Path(__file__).resolve().parent

# file -> class names the app pre-fills for it
EXAMPLES = {
    "mountain_lake.jpg": "sky, cloud, mountain, snow, water, grass, tree",
    "city_street.jpg": "sky, building, window, road, sidewalk, car, person, traffic light",
    "beach.jpg": "sky, sun, sea, sand, beach umbrella, palm tree, boat",
    "living_room.jpg": "wall, floor, window, sofa, table, lamp, painting, plant",
}


def gradient(top, bottom, h=H, w=W) -> np.ndarray:
    t = np.linspace(0.0, 1.0, h)[:, None, None]
    col = np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t
    return np.broadcast_to(col, (h, w, 3)).copy()


def texture(img: Image.Image, rng: np.random.Generator, amount: float = 6.0) -> Image.Image:
    """Mild noise so the JPEGs look like photos rather than flat drawings."""
    arr = np.asarray(img, np.float32) + rng.normal(0, amount, (img.height, img.width, 1))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def tree(d: ImageDraw.ImageDraw, x: int, base: int, h: int, color=(34, 110, 45)) -> None:
    d.rectangle([x - h // 20, base - h // 4, x + h // 20, base], fill=(96, 64, 38))
    for i in range(3):
        top = base - h + i * h // 5
        half = h // 4 + i * h // 14
        d.polygon([(x, top), (x - half, top + h // 2), (x + half, top + h // 2)], fill=color)


def mountain_lake(rng) -> Image.Image:
    img = Image.fromarray(gradient((70, 130, 210), (190, 220, 245)).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for cx, cy, s in ((120, 70, 1.0), (430, 50, 1.3), (560, 110, 0.8)):  # clouds
        for dx, dy, r in ((0, 0, 28), (30, -10, 34), (62, 0, 26), (30, 10, 28)):
            d.ellipse([cx + dx * s - r * s, cy + dy * s - r * s, cx + dx * s + r * s, cy + dy * s + r * s],
                      fill=(250, 250, 252))
    peaks = [(-40, 300, 130, 110, 300), (150, 300, 330, 70, 300), (330, 300, 520, 120, 300),
             (470, 300, 700, 90, 300)]
    for x0, y0, px, py, _ in peaks:
        x1 = 2 * px - x0
        d.polygon([(x0, y0), (px, py), (x1, y0)], fill=(105, 100, 112))
        sw = (y0 - py) * 0.28
        d.polygon([(px - sw * (px - x0) / (y0 - py), py + sw), (px, py),
                   (px + sw * (x1 - px) / (y0 - py), py + sw)], fill=(245, 248, 252))
    top = img.crop((0, 0, W, 300))
    lake = Image.fromarray((np.asarray(top.transpose(Image.Transpose.FLIP_TOP_BOTTOM), np.float32) * 0.55
                            + np.array([20, 60, 90], np.float32)).clip(0, 255).astype(np.uint8))
    img.paste(lake.crop((0, 0, W, 90)).filter(ImageFilter.GaussianBlur(2)), (0, 300))
    d = ImageDraw.Draw(img)
    d.polygon([(0, 380), (200, 370), (420, 385), (W, 372), (W, H), (0, H)], fill=(88, 150, 60))
    for x in (40, 95, 150, 520, 585):
        tree(d, x, 420 + (x % 3) * 12, 150)
    return texture(img, rng)


def city_street(rng) -> Image.Image:
    img = Image.fromarray(gradient((120, 170, 225), (215, 230, 240)).astype(np.uint8))
    d = ImageDraw.Draw(img)
    x = 0
    for w, h, c in ((130, 250, (150, 120, 100)), (110, 320, (180, 180, 190)), (150, 210, (170, 90, 70)),
                    (120, 290, (120, 130, 150)), (140, 240, (200, 185, 150))):
        d.rectangle([x, 330 - h, x + w - 4, 330], fill=c)
        for wy in range(330 - h + 15, 310, 32):
            for wx in range(x + 12, x + w - 24, 26):
                d.rectangle([wx, wy, wx + 14, wy + 18], fill=(60, 80, 110))
        x += w
    d.rectangle([0, 330, W, 360], fill=(170, 165, 160))  # sidewalk
    d.rectangle([0, 360, W, H], fill=(70, 70, 75))  # road
    for lx in range(10, W, 90):
        d.rectangle([lx, 418, lx + 50, 424], fill=(235, 235, 235))
    # car
    d.rounded_rectangle([300, 370, 470, 430], 14, fill=(200, 30, 40))
    d.polygon([(330, 370), (360, 338), (420, 338), (448, 370)], fill=(200, 30, 40))
    d.polygon([(342, 368), (365, 344), (388, 344), (388, 368)], fill=(150, 190, 220))
    d.polygon([(396, 368), (396, 344), (417, 344), (436, 368)], fill=(150, 190, 220))
    for wx in (335, 435):
        d.ellipse([wx - 20, 410, wx + 20, 450], fill=(25, 25, 25))
        d.ellipse([wx - 8, 422, wx + 8, 438], fill=(160, 160, 160))
    # person
    d.ellipse([128, 250, 152, 274], fill=(225, 185, 150))
    d.rounded_rectangle([124, 274, 156, 320], 8, fill=(40, 90, 160))
    d.rectangle([128, 318, 138, 352], fill=(40, 40, 50))
    d.rectangle([142, 318, 152, 352], fill=(40, 40, 50))
    # traffic light
    d.rectangle([548, 200, 556, 345], fill=(50, 50, 50))
    d.rounded_rectangle([536, 150, 568, 230], 6, fill=(30, 30, 30))
    for i, c in enumerate(((220, 40, 30), (90, 80, 20), (40, 80, 40))):
        d.ellipse([544, 156 + i * 25, 560, 172 + i * 25], fill=c)
    return texture(img, rng)


def beach(rng) -> Image.Image:
    img = Image.fromarray(gradient((60, 150, 230), (180, 225, 250)).astype(np.uint8))
    d = ImageDraw.Draw(img)
    d.ellipse([470, 40, 550, 120], fill=(255, 225, 90))
    sea = gradient((30, 110, 170), (60, 170, 190), h=130)
    img.paste(Image.fromarray(sea.astype(np.uint8)), (0, 250))
    d = ImageDraw.Draw(img)
    for y in range(262, 380, 14):
        for x in range(int(rng.integers(0, 40)), W, 80):
            d.arc([x, y, x + 40, y + 8], 200, 340, fill=(200, 230, 240), width=2)
    d.polygon([(0, 360), (W, 330), (W, H), (0, H)], fill=(228, 205, 150))
    # boat
    d.polygon([(150, 300), (250, 300), (232, 322), (168, 322)], fill=(120, 60, 40))
    d.polygon([(200, 230), (200, 296), (245, 296)], fill=(245, 245, 240))
    d.line([(200, 226), (200, 300)], fill=(80, 60, 40), width=3)
    # umbrella
    d.line([(380, 330), (395, 450)], fill=(90, 80, 70), width=5)
    d.pieslice([300, 300, 460, 400], 180, 360, fill=(230, 60, 60))
    for a in range(195, 360, 30):
        r = math.radians(a)
        d.line([(380, 350), (380 + 80 * math.cos(r), 350 + 50 * math.sin(r))], fill=(250, 240, 240), width=3)
    # palm tree
    pts = [(80 + 6 * math.sin(t / 12), 470 - t * 1.1) for t in range(0, 230, 10)]
    d.line(pts, fill=(130, 95, 60), width=16)
    tx, ty = pts[-1]
    for a in range(0, 360, 45):
        r = math.radians(a)
        leaf = [(tx, ty), (tx + 90 * math.cos(r) - 14 * math.sin(r), ty + 45 * math.sin(r) + 25),
                (tx + 90 * math.cos(r) + 14 * math.sin(r), ty + 45 * math.sin(r) + 40)]
        d.polygon(leaf, fill=(40, 140, 60))
    return texture(img, rng)


def living_room(rng) -> Image.Image:
    img = Image.fromarray(gradient((230, 215, 190), (210, 195, 170), h=H).astype(np.uint8))
    d = ImageDraw.Draw(img)
    floor = Image.fromarray(gradient((150, 105, 70), (120, 80, 50), h=150).astype(np.uint8))
    img.paste(floor, (0, 330))
    d = ImageDraw.Draw(img)
    for x in range(0, W, 64):
        d.line([(x, 330), (x - 30, H)], fill=(110, 75, 45), width=2)
    # window with sky
    d.rectangle([400, 60, 580, 230], fill=(245, 245, 245))
    d.rectangle([410, 70, 570, 220], fill=(140, 190, 235))
    d.line([(490, 70), (490, 220)], fill=(245, 245, 245), width=8)
    d.line([(410, 145), (570, 145)], fill=(245, 245, 245), width=8)
    # painting
    d.rectangle([90, 80, 250, 190], fill=(120, 80, 40))
    d.rectangle([100, 90, 240, 180], fill=(240, 200, 120))
    d.polygon([(100, 180), (160, 120), (200, 160), (240, 130), (240, 180)], fill=(60, 120, 90))
    # sofa
    d.rounded_rectangle([60, 250, 340, 380], 20, fill=(70, 90, 140))
    d.rounded_rectangle([40, 290, 90, 390], 14, fill=(60, 80, 125))
    d.rounded_rectangle([310, 290, 360, 390], 14, fill=(60, 80, 125))
    d.rectangle([90, 330, 310, 360], fill=(85, 105, 160))
    # table
    d.rectangle([380, 360, 560, 375], fill=(100, 65, 35))
    d.rectangle([392, 375, 402, 440], fill=(90, 60, 30))
    d.rectangle([538, 375, 548, 440], fill=(90, 60, 30))
    # lamp
    d.line([(600, 250), (600, 420)], fill=(60, 60, 60), width=5)
    d.polygon([(575, 250), (625, 250), (612, 205), (588, 205)], fill=(250, 235, 180))
    d.ellipse([585, 415, 615, 428], fill=(60, 60, 60))
    # plant
    d.polygon([(460, 330), (500, 330), (494, 360), (466, 360)], fill=(180, 90, 60))
    for a in range(-70, 80, 20):
        r = math.radians(a - 90)
        d.ellipse([480 + 40 * math.cos(r) - 10, 320 + 45 * math.sin(r) - 18,
                   480 + 40 * math.cos(r) + 10, 320 + 45 * math.sin(r) + 18], fill=(50, 130, 60))
    return texture(img, rng, 4.0)


def main() -> None:
    rng = np.random.default_rng(0)
    for name, fn in (("mountain_lake.jpg", mountain_lake), ("city_street.jpg", city_street),
                     ("beach.jpg", beach), ("living_room.jpg", living_room)):
        path = HERE / name
        fn(rng).save(path, quality=85, optimize=True)
        print(f"{path.name}: {path.stat().st_size / 1024:.0f} KB")
    (HERE / "classes.json").write_text(json.dumps(EXAMPLES, indent=2) + "\n", "utf-8")


if __name__ == "__main__":
    main()
