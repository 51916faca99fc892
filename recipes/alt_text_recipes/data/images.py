"""Open user photos safely and turn every colour mode into the RGB the image processor expects.

Real collections hold CMYK JPEGs, transparent PNGs, palette GIFs, 16-bit scans, rotated phone photos,
truncated uploads, empty (0-byte) files and files that are not images at all. `open_checked` reads one fully
(so a truncated file fails here, not inside a training step) and refuses images whose size would exhaust
memory or whose shape cannot make a picture; `to_rgb` converts what is usable.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# The files read as photos, wherever photos are looked for (caption folders, alt-text inputs).
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}

# Larger than any photo a caption model needs; a decompression bomb is far above it.
MAX_PIXELS = 50_000_000
# A 20000×50 strip resized to the model's square input shows nothing.
MAX_ASPECT_RATIO = 20.0


class BadImage(ValueError):
    """An image that cannot be used; the message is the reason shown to the user."""


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Transparent pixels on white, as a page shows them (a plain convert would keep their hidden colour)."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _high_bit_depth_to_8bit(image: Image.Image) -> Image.Image:
    values = np.asarray(image, dtype=np.float64)
    top = 65535.0 if values.max(initial=0) > 255 else 255.0
    return Image.fromarray(np.clip(values / top * 255.0, 0, 255).astype(np.uint8), mode="L").convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """EXIF orientation applied, then RGB: alpha flattened on white, 16-bit scaled, CMYK/palette/grey converted."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        return _flatten_alpha(image)
    if image.mode.startswith("I") or image.mode == "F":
        return _high_bit_depth_to_8bit(image)
    return image.convert("RGB")


def check_size(
    size: tuple[int, int], max_pixels: int = MAX_PIXELS, max_aspect_ratio: float = MAX_ASPECT_RATIO
) -> None:
    width, height = size
    if width * height > max_pixels:
        raise BadImage(
            f"too large: {width}×{height} = {width * height / 1e6:.0f} megapixels "
            f"(limit {max_pixels / 1e6:.0f}; resize it first)"
        )
    if max(width, height) / max(1, min(width, height)) > max_aspect_ratio:
        raise BadImage(
            f"extreme aspect ratio {width}×{height} (limit {max_aspect_ratio:g}:1): "
            f"squeezed into the model's square input it would show nothing"
        )


def open_checked(
    source: str | Path | bytes, max_pixels: int = MAX_PIXELS, max_aspect_ratio: float = MAX_ASPECT_RATIO
) -> Image.Image:
    """Open and fully decode an image file (or its bytes) as RGB, or raise `BadImage` saying why."""
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise BadImage("file not found")
    if isinstance(source, (str, Path)) and Path(source).stat().st_size == 0:
        raise BadImage("empty file (0 bytes)")  # an upload or copy that failed; Pillow calls it "unrecognised"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
                check_size(image.size, max_pixels, max_aspect_ratio)  # from the header, before decoding
                image.load()  # a truncated or corrupt file fails here
                return to_rgb(image)
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image (unrecognised file format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise BadImage(f"too large to decode safely: {error}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise BadImage(f"unreadable image ({type(error).__name__}: {error})") from None
