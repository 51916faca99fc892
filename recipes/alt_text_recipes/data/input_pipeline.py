"""The fast input pipeline: images reach the collator decoded, upright, RGB and at the model's input size.

The plain pattern decodes every photo at full size in the main process and lets the image processor
resize it inside the training step, so the accelerator waits on one CPU core. Here each DataLoader worker
reads the stored bytes and decodes JPEGs with Pillow's draft mode: the decoder scales by 1/2, 1/4 or 1/8
in the DCT domain (the way `Image.thumbnail` does), never below the model's input size, which skips most
of the decoding work; the image is then made upright and RGB (`to_rgb`) and resized by the image processor
itself (rescaling and normalisation off), so the pixels are the processor's whichever backend this environment
gives it (PIL, or torchvision where torchvision is installed). With `cache=True` this happens once per data
set (in parallel, into the `datasets` cache as uint8 arrays, reused by later runs on the same data) instead of
once per epoch. The collator, run in the workers, calls the processor with `do_resize=False`, so rescaling,
normalisation and the `<image>` tokens stay the processor's. `benchmarks/throughput.py` measures both against
the plain pattern.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
from datasets import Dataset, Features, IterableDataset, Value
from datasets import Image as ImageFeature
from PIL import Image

from alt_text_recipes.data.images import to_rgb

# More workers than this stop paying: one decodes a 640×480 JPEG at 224² in about 2 ms.
MAX_DEFAULT_WORKERS = 8


def default_num_workers() -> int:
    """DataLoader workers per training process: this process's share of the CPU cores, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    processes_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(MAX_DEFAULT_WORKERS, cores // processes_here))


def model_input_size(processor: Any) -> tuple[int, int] | None:
    """(width, height) every image is resized to, when the image processor uses one fixed size."""
    size = getattr(getattr(processor, "image_processor", None), "size", None) or {}
    if "height" in size and "width" in size:
        return int(size["width"]), int(size["height"])
    return None  # shortest-edge or tiling processors resize by their own rules


class ImagePreparer:
    """Decode stored image bytes (or a path) into an upright RGB uint8 array at the model's input size."""

    def __init__(self, size: tuple[int, int], image_processor: Any):
        self.size = size
        self.image_processor = image_processor

    def __call__(self, stored: dict[str, Any]) -> np.ndarray:
        source = io.BytesIO(stored["bytes"]) if stored.get("bytes") else stored["path"]
        with Image.open(source) as image:
            # EXIF rotation can swap width and height: ask the decoder for enough pixels either way.
            side = max(self.size)
            image.draft("RGB", (side, side))  # JPEG only; a no-op for other formats
            image = to_rgb(image)
        if image.size == self.size:
            return np.array(image)  # a writable copy: torch warns on every read-only array it wraps
        return self.resized(image)

    def resized(self, image: Image.Image) -> np.ndarray:
        """The image resized as the processor resizes it (its filter, and its backend's arithmetic: PIL's and
        torchvision's bicubic differ by a grey level here and there), still uint8, channels last."""
        pixels = self.image_processor(image, do_rescale=False, do_normalize=False, return_tensors="np")
        return np.ascontiguousarray(pixels["pixel_values"][0].transpose(1, 2, 0))

    def transform(self, batch: dict[str, list]) -> dict[str, list]:
        """A `datasets` transform: run on access, so in the DataLoader worker that reads the row."""
        batch["image"] = [self(stored) for stored in batch["image"]]
        return batch

    def to_cache(self, batch: dict[str, list]) -> dict[str, list]:
        # Raw pixel bytes: read back as one array each (an Array3D column comes back as int64 lists, 20× slower).
        batch["image"] = [self(stored).tobytes() for stored in batch["image"]]
        return batch

    def from_cache(self, batch: dict[str, list]) -> dict[str, list]:
        width, height = self.size
        batch["image"] = [  # writable (a copy of 150 kB at 224²): torch warns on every read-only array it wraps
            np.frombuffer(pixels, dtype=np.uint8).reshape(height, width, 3).copy() for pixels in batch["image"]
        ]
        return batch


def prepare_for_training(
    split: Dataset | IterableDataset, processor: Any, cache: bool = False, num_proc: int = 1
) -> Dataset | IterableDataset:
    """`split` with its `image` column decoded and resized at the model's input size: on access (in the
    DataLoader workers), or once now into the cache with `cache=True`. A stream is never cached: it is
    prepared as it is read. Unchanged when the processor does not resize to one fixed size."""
    size = model_input_size(processor)
    if size is None:
        return split
    preparer = ImagePreparer(size, processor.image_processor)
    stored = split.cast_column("image", ImageFeature(decode=False))
    if isinstance(stored, IterableDataset):
        return stored.map(preparer.transform, batched=True, batch_size=64)
    if not cache:
        return stored.with_transform(preparer.transform)
    features = Features({**stored.features, "image": Value("binary")})
    prepared = stored.map(
        preparer.to_cache,
        batched=True,
        batch_size=64,
        features=features,
        num_proc=num_proc if num_proc > 1 and len(stored) >= 256 else None,
        desc=f"decoding images once at {size[0]}×{size[1]}",
    )
    return prepared.with_transform(preparer.from_cache)


def is_prepared(image: Any) -> bool:
    return isinstance(image, np.ndarray)
