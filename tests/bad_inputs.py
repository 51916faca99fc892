"""Write a photo collection with every problem real uploads have, as an imagefolder data set (at test time).

USABLE rows must be converted and used; BAD rows must be skipped with the reason given (a fragment of it).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

# file name -> (caption, why it is interesting)
USABLE = {
    "plain_0.jpg": "a red plate of pasta on a wooden table",
    "plain_1.jpg": "a blue bowl of soup on a marble counter",
    "plain_2.jpg": "a white tray of pizza on a dark slate",
    "cmyk.jpg": "a yellow plate of rice on a wooden table",
    "rgba.png": "a green bowl of salad on a red checkered cloth",
    "la.png": "a gray plate of pancakes on a marble counter",
    "palette.png": "a blue tray of pasta on a wooden table",
    "palette_transparent.gif": "a red bowl of soup on a dark slate",
    "gray.png": "a white plate of rice on a wooden table",
    "gray16.png": "a black bowl of pasta on a marble counter",
    "exif_rotated.jpg": "a red tray of pizza on a wooden table",
    "one_pixel.png": "a plate of food",
    "non_ascii.jpg": "crème brûlée au café on a plate, 北京烤鸭 beside it ☕",
    "overlong.jpg": " ".join(["a very long caption about a plate of food"] * 40),
}
BAD = {
    "truncated.jpg": ("a red plate of pasta", "unreadable image"),
    "corrupt.png": ("a blue bowl of soup", "unreadable image"),
    "not_an_image.jpg": ("a white tray of pizza", "not an image"),
    "empty.jpg": ("a plate that never finished uploading", "empty file (0 bytes)"),
    "missing.jpg": ("a plate that is not there", "file not found"),
    "panorama.png": ("a long table of dishes", "extreme aspect ratio"),
    "bomb.png": ("a huge picture", "too large"),
    "empty_caption.jpg": ("", "empty caption"),
    "blank_caption.jpg": ("   \n\t ", "empty caption"),
    "no_caption.jpg": (None, "missing caption"),
}


def _photo(size=(48, 32), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def _jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **kwargs)
    return buffer.getvalue()


def write_images(folder: Path) -> None:
    for index in range(3):
        _photo(seed=index).save(folder / f"plain_{index}.jpg")
    _photo(seed=3).convert("CMYK").save(folder / "cmyk.jpg")
    rgba = _photo(seed=4).convert("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 0).point(lambda _: 0))  # fully transparent: must come out white
    rgba.save(folder / "rgba.png")
    _photo(seed=5).convert("LA").save(folder / "la.png")
    _photo(seed=6).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png")
    palette = _photo(seed=7).convert("P", palette=Image.Palette.ADAPTIVE)
    palette.save(folder / "palette_transparent.gif", transparency=0)
    _photo(seed=8).convert("L").save(folder / "gray.png")
    Image.fromarray(np.full((32, 48), 40000, dtype=np.uint16)).save(folder / "gray16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    _photo((60, 20), seed=9).save(folder / "exif_rotated.jpg", exif=exif.tobytes())
    Image.new("RGB", (1, 1), (200, 30, 30)).save(folder / "one_pixel.png")
    _photo(seed=10).save(folder / "non_ascii.jpg")
    _photo(seed=11).save(folder / "overlong.jpg")

    whole = _jpeg_bytes(_photo((64, 64), seed=12))
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    png = io.BytesIO()
    _photo(seed=13).save(png, "PNG")
    data = bytearray(png.getvalue())
    data[60:200] = bytes(140)  # header intact, compressed data destroyed
    (folder / "corrupt.png").write_bytes(bytes(data))
    (folder / "not_an_image.jpg").write_text("this is a text file with an image extension")
    (folder / "empty.jpg").write_bytes(b"")
    Image.new("RGB", (20000, 50), (90, 90, 90)).save(folder / "panorama.png")
    Image.new("1", (9000, 9000), 0).save(folder / "bomb.png")  # 81 megapixels in a few kB
    for name in ("empty_caption.jpg", "blank_caption.jpg", "no_caption.jpg"):
        _photo(seed=14).save(folder / name)


def write_corpus(root: Path) -> Path:
    """An imagefolder data set with a `train` split holding every case; returns its root."""
    split = root / "train"
    split.mkdir(parents=True)
    write_images(split)
    rows = [{"file_name": name, "text": caption} for name, caption in USABLE.items()]
    rows += [{"file_name": name, "text": caption} for name, (caption, _) in BAD.items()]
    (split / "metadata.jsonl").write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\n")
    return root
