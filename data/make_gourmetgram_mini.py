"""Generate `data/gourmetgram-mini`: a small, deterministic food-photo caption data set.

Each image is a drawn dish: a container (plate, bowl or tray) of some colour holding a dish,
with zero to four toppings, on a background. The caption names all of it, so a model can only
write it correctly by looking at the image. The test split holds (dish, topping) pairs that never
occur in train or validation, so it measures generalisation to unseen combinations.

    python data/make_gourmetgram_mini.py            # rewrites data/gourmetgram-mini
    python data/make_gourmetgram_mini.py --out DIR --train 800 --validation 100 --test 100

The layout is the ordinary `imagefolder` one: `<split>/<file>.jpg` plus `<split>/metadata.jsonl`
with `file_name` and `text`.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

IMAGE_SIZE = 128

# name -> RGB fill colour
CONTAINER_COLOURS = {"white": (236, 236, 232), "blue": (50, 90, 190), "black": (30, 30, 32), "yellow": (235, 200, 40)}
CONTAINERS = ("plate", "bowl", "tray")
BACKGROUNDS = {
    "wooden table": ((140, 90, 50), (110, 68, 36)),
    "marble counter": ((205, 205, 210), (160, 160, 170)),
    "dark slate": ((60, 64, 70), (45, 48, 52)),
    "red checkered cloth": ((200, 40, 40), (245, 245, 245)),
}
DISHES = ("tomato soup", "pea soup", "pasta", "rice", "salad", "pancakes", "pizza")
TOPPINGS = {  # plural name -> (colour, shape)
    "strawberries": ((215, 30, 45), "heart"),
    "blueberries": ((40, 50, 140), "dot"),
    "olives": ((20, 20, 20), "ring"),
    "lemon slices": ((250, 230, 60), "half"),
    "mint leaves": ((40, 170, 70), "leaf"),
}
SINGULAR = {
    "strawberries": "strawberry",
    "blueberries": "blueberry",
    "olives": "olive",
    "lemon slices": "lemon slice",
    "mint leaves": "mint leaf",
}
NUMBERS = ("no", "one", "two", "three", "four")

# (dish, topping) pairs reserved for the test split: every dish and every topping still occurs
# in training, only these combinations do not.
HELD_OUT_PAIRS = {
    ("tomato soup", "mint leaves"),
    ("pasta", "olives"),
    ("salad", "strawberries"),
    ("pancakes", "blueberries"),
    ("pizza", "lemon slices"),
    ("rice", "strawberries"),
}


@dataclass(frozen=True)
class Scene:
    dish: str
    container: str
    colour: str
    topping: str
    count: int
    background: str

    def caption(self) -> str:
        text = f"a {self.colour} {self.container} of {self.dish}"
        if self.count:
            topping = self.topping if self.count > 1 else SINGULAR[self.topping]
            text += f" topped with {NUMBERS[self.count]} {topping}"
        return f"{text} on a {self.background}"


def random_scene(rng: random.Random) -> Scene:
    return Scene(
        dish=rng.choice(DISHES),
        container=rng.choice(CONTAINERS),
        colour=rng.choice(sorted(CONTAINER_COLOURS)),
        topping=rng.choice(sorted(TOPPINGS)),
        count=rng.randint(0, 4),
        background=rng.choice(sorted(BACKGROUNDS)),
    )


def is_held_out(scene: Scene) -> bool:
    return scene.count > 0 and (scene.dish, scene.topping) in HELD_OUT_PAIRS


def _jitter(colour: tuple[int, int, int], rng: random.Random, amount: int = 18) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in colour)


def _draw_background(draw: ImageDraw.ImageDraw, name: str, rng: random.Random) -> None:
    base, accent = BACKGROUNDS[name]
    draw.rectangle([0, 0, IMAGE_SIZE, IMAGE_SIZE], fill=_jitter(base, rng))
    if name == "wooden table":
        for y in range(0, IMAGE_SIZE, rng.randint(9, 14)):
            draw.line([0, y, IMAGE_SIZE, y + rng.randint(-4, 4)], fill=_jitter(accent, rng), width=2)
    elif name == "marble counter":
        for _ in range(5):
            x0, y0 = rng.randint(0, IMAGE_SIZE), rng.randint(0, IMAGE_SIZE)
            draw.line(
                [x0, y0, x0 + rng.randint(-60, 60), y0 + rng.randint(-60, 60)], fill=_jitter(accent, rng), width=1
            )
    elif name == "red checkered cloth":
        step = 16
        for i in range(0, IMAGE_SIZE, step):
            for j in range(0, IMAGE_SIZE, step):
                if (i // step + j // step) % 2:
                    draw.rectangle([i, j, i + step, j + step], fill=_jitter(accent, rng, 8))
    else:  # dark slate: speckles
        for _ in range(60):
            x, y = rng.randint(0, IMAGE_SIZE), rng.randint(0, IMAGE_SIZE)
            draw.point((x, y), fill=_jitter(accent, rng))


def _draw_container(draw, scene: Scene, cx: int, cy: int, r: int, rng: random.Random) -> tuple[int, int, int, int]:
    """Draw the container and return the box the food goes in."""
    colour = _jitter(CONTAINER_COLOURS[scene.colour], rng, 10)
    shade = tuple(int(c * 0.75) for c in colour)
    if scene.container == "plate":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=shade)
        draw.ellipse([cx - r + 3, cy - r + 3, cx + r - 3, cy + r - 3], fill=colour)
        inner = int(r * 0.72)
    elif scene.container == "bowl":
        r = int(r * 0.85)
        draw.ellipse([cx - r + 4, cy - r + 6, cx + r + 4, cy + r + 6], fill=(20, 20, 20))  # shadow
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        inner = int(r * 0.78)
        draw.ellipse([cx - inner - 2, cy - inner - 2, cx + inner + 2, cy + inner + 2], fill=shade)
    else:  # tray
        draw.rounded_rectangle(
            [cx - r, cy - int(r * 0.8), cx + r, cy + int(r * 0.8)], radius=6, fill=colour, outline=shade, width=3
        )
        inner = int(r * 0.65)
    return cx - inner, cy - inner, cx + inner, cy + inner


def _draw_dish(draw, dish: str, box: tuple[int, int, int, int], rng: random.Random) -> None:
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) // 2, (y0 + y1) // 2, (x1 - x0) // 2
    if dish in ("tomato soup", "pea soup"):
        colour = (200, 45, 30) if dish == "tomato soup" else (110, 170, 50)
        draw.ellipse(box, fill=_jitter(colour, rng, 12))
    elif dish == "pasta":
        for _ in range(14):
            pts = []
            a0, y = rng.uniform(0, 6.28), rng.uniform(-r * 0.7, r * 0.7)
            for k in range(8):
                x = -r * 0.7 + k * r * 0.2
                pts.append((cx + x, cy + y + 3 * math.sin(a0 + k)))
            draw.line(pts, fill=_jitter((240, 200, 90), rng, 10), width=2)
    elif dish == "rice":
        draw.ellipse([x0 + 4, y0 + 4, x1 - 4, y1 - 4], fill=(238, 236, 225))
        for _ in range(50):
            x, y = cx + rng.uniform(-r * 0.7, r * 0.7), cy + rng.uniform(-r * 0.7, r * 0.7)
            draw.ellipse([x - 1.5, y - 1, x + 1.5, y + 1], fill=(210, 205, 190))
    elif dish == "salad":
        for _ in range(18):
            x, y = cx + rng.uniform(-r * 0.75, r * 0.75), cy + rng.uniform(-r * 0.75, r * 0.75)
            s = rng.uniform(4, 8)
            draw.ellipse([x - s, y - s * 0.6, x + s, y + s * 0.6], fill=_jitter((60, 150, 40), rng, 25))
    elif dish == "pancakes":
        for k in range(3):
            off = 4 - 4 * k
            draw.ellipse(
                [x0 + 2, y0 + 6 + off, x1 - 2, y1 - 2 + off],
                fill=_jitter((185, 120, 50), rng, 10),
                outline=(120, 70, 25),
            )
    else:  # pizza
        draw.ellipse(box, fill=(200, 150, 80))
        draw.ellipse([x0 + 4, y0 + 4, x1 - 4, y1 - 4], fill=_jitter((230, 110, 30), rng, 10))


def _draw_toppings(draw, topping: str, count: int, box, rng: random.Random) -> None:
    colour, shape = TOPPINGS[topping]
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    start = rng.uniform(0, 6.28)
    for k in range(count):
        angle = start + k * 2 * math.pi / max(count, 1)
        dist = 0 if count == 1 else r * 0.5
        x, y = cx + dist * math.cos(angle), cy + dist * math.sin(angle)
        s = 6
        fill = _jitter(colour, rng, 10)
        if shape == "dot":
            draw.ellipse([x - s * 0.7, y - s * 0.7, x + s * 0.7, y + s * 0.7], fill=fill, outline=(10, 10, 40))
        elif shape == "ring":
            draw.ellipse([x - s, y - s * 0.7, x + s, y + s * 0.7], fill=fill)
            draw.ellipse([x - 2, y - 1.5, x + 2, y + 1.5], fill=(90, 40, 60))
        elif shape == "half":
            draw.pieslice([x - s, y - s, x + s, y + s], 180, 360, fill=fill, outline=(255, 255, 200))
        elif shape == "leaf":
            draw.polygon([(x - s, y), (x, y - s * 0.6), (x + s, y), (x, y + s * 0.6)], fill=fill, outline=(20, 90, 30))
        else:  # heart-ish strawberry
            draw.polygon([(x - s, y - s * 0.5), (x + s, y - s * 0.5), (x, y + s)], fill=fill)
            draw.rectangle([x - 2, y - s * 0.8, x + 2, y - s * 0.5], fill=(40, 140, 40))


def render(scene: Scene, rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE))
    draw = ImageDraw.Draw(image)
    _draw_background(draw, scene.background, rng)
    cx = IMAGE_SIZE // 2 + rng.randint(-10, 10)
    cy = IMAGE_SIZE // 2 + rng.randint(-10, 10)
    box = _draw_container(draw, scene, cx, cy, rng.randint(44, 54), rng)
    _draw_dish(draw, scene.dish, box, rng)
    _draw_toppings(draw, scene.topping, scene.count, box, rng)
    return image.filter(ImageFilter.GaussianBlur(radius=0.4))


def write_split(out_dir: Path, split: str, scenes: list[Scene], rng: random.Random) -> None:
    split_dir = out_dir / split
    split_dir.mkdir(parents=True)
    with open(split_dir / "metadata.jsonl", "w") as metadata:
        for index, scene in enumerate(scenes):
            file_name = f"{split}_{index:04d}.jpg"
            render(scene, rng).save(split_dir / file_name, quality=88)
            metadata.write(json.dumps({"file_name": file_name, "text": scene.caption()}) + "\n")


def make_dataset(out_dir: Path, sizes: dict[str, int], seed: int = 0) -> None:
    rng = random.Random(seed)
    seen: list[Scene] = []
    held_out: list[Scene] = []
    while len(seen) < sizes["train"] + sizes["validation"] or len(held_out) < sizes["test"]:
        scene = random_scene(rng)
        (held_out if is_held_out(scene) else seen).append(scene)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    write_split(out_dir, "train", seen[: sizes["train"]], rng)
    write_split(out_dir, "validation", seen[sizes["train"] : sizes["train"] + sizes["validation"]], rng)
    write_split(out_dir, "test", held_out[: sizes["test"]], rng)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "gourmetgram-mini")
    parser.add_argument("--train", type=int, default=800)
    parser.add_argument("--validation", type=int, default=100)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    make_dataset(args.out, {"train": args.train, "validation": args.validation, "test": args.test}, args.seed)
    print(f"wrote {args.train}/{args.validation}/{args.test} images to {args.out}")


if __name__ == "__main__":
    main()
