"""Makes the example drawings in assets/examples/: pen strokes on white, as a learner would draw them on the pad.

Run once: `python assets/make_examples.py`. Shapes wobble a little (seeded) so they look hand-drawn.
"""

import math
import random
from pathlib import Path

from PIL import Image, ImageDraw

SIZE, PEN = 280, 9
OUT = Path(__file__).parent / "examples"


def wobbly(points, rng, amount=4.0):
    return [(x + rng.uniform(-amount, amount), y + rng.uniform(-amount, amount)) for x, y in points]


def polygon(n, r, turn=0.0, inner=None):
    pts = []
    for k in range(n * (2 if inner else 1)):
        radius = inner if inner and k % 2 else r
        a = turn + k * math.pi / (n if inner else n / 2)
        pts.append((140 + radius * math.sin(a), 140 - radius * math.cos(a)))
    return pts + pts[:1]


def main():
    OUT.mkdir(exist_ok=True)
    rng = random.Random(0)
    shapes = {
        "circle": [
            (140 + 95 * math.cos(t / 30 * 2 * math.pi), 140 + 85 * math.sin(t / 30 * 2 * math.pi)) for t in range(31)
        ],
        "triangle": polygon(3, 105),
        "star": polygon(5, 110, inner=45),
        "square": polygon(4, 115, turn=math.pi / 4),
        "arrow": [[(40, 150), (240, 130)], [(180, 80), (240, 130), (185, 190)]],
        "plus": [[(140, 40), (140, 240)], [(40, 140), (240, 140)]],
    }
    for name, strokes in shapes.items():
        img = Image.new("RGB", (SIZE, SIZE), "white")
        draw = ImageDraw.Draw(img)
        for stroke in strokes if isinstance(strokes[0], list) else [strokes]:
            draw.line(wobbly(stroke, rng), fill="black", width=PEN, joint="curve")
        img.save(OUT / f"{name}.png")


if __name__ == "__main__":
    main()
