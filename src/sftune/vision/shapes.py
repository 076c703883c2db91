"""The synthetic image task: a figure drawn with Pillow, and the question of its colour and shape.

Each example is a PNG of one filled figure (COLOURS x SHAPES) at a random place and size on a light
background, and a conversation asking what it is, answered "<colour> <shape>". Seeded, so the same
seed writes the same files; a held-out split uses another seed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220)}
SHAPES = ("circle", "square", "triangle")
QUESTION = "What is in the picture? Answer with its colour and shape."


def draw(colour: str, shape: str, rng: random.Random, size: int = 32):
    """One figure on a light background, at a random place and size."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), tuple(rng.randint(225, 255) for _ in range(3)))
    pen = ImageDraw.Draw(image)
    side = rng.randint(size // 2, size - 6)
    x, y = rng.randint(2, size - side - 2), rng.randint(2, size - side - 2)
    fill = COLOURS[colour]
    if shape == "circle":
        pen.ellipse((x, y, x + side, y + side), fill=fill)
    elif shape == "square":
        pen.rectangle((x, y, x + side, y + side), fill=fill)
    else:
        pen.polygon([(x + side / 2, y), (x, y + side), (x + side, y + side)], fill=fill)
    return image


def write(folder: str | Path, n: int, seed: int, name: str = "train") -> Path:
    """n examples: images under folder/<name>/ and folder/<name>.jsonl (OpenAI image parts, relative paths)."""
    folder = Path(folder)
    (folder / name).mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines = []
    for k in range(n):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        path = f"{name}/{k:05d}.png"
        draw(colour, shape, rng).save(folder / path)
        lines.append({"messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": path}},
                                         {"type": "text", "text": QUESTION}]},
            {"role": "assistant", "content": f"{colour} {shape}"}]})
    out = folder / f"{name}.jsonl"
    out.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return out
