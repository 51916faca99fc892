"""Load caption data sets into the two columns the collator reads: `image` (PIL) and `text`.

`recipes/alt_text_recipes/data/layouts.py` recognises and reads the layouts (caption files, a folder of photos with
one, COCO / Karpathy JSON, chat rows, imagefolder, save_to_disk, Hub ids). Here the splits are completed: data
that has no validation or test split can hold out a seeded share of its training images for one, grouped by
image so that no photo (with any of its captions) is in two splits.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, Sequence

from datasets import Dataset, DatasetDict, Image

from alt_text_recipes.data.errors import DatasetError  # noqa: F401  (imported from here by the recipes and tests)
from alt_text_recipes.data.layouts import read_source, read_split_files

HELD_OUT_FROM = "train"


def as_reference_list(captions: str | Sequence[str]) -> list[str]:
    """One image's references: a caption column holds one string or a list of them."""
    return [captions] if isinstance(captions, str) else list(captions)


def load_caption_dataset(
    name_or_path: str,
    image_column: str = "image",
    caption_column: str = "text",
    config_name: str | None = None,
    split_files: dict[str, str | None] | None = None,
    validation_split_percentage: float = 0,
    test_split_percentage: float = 0,
    seed: int = 42,
    data_format: str = "auto",
) -> DatasetDict:
    """Load every split of a caption data set with columns `image` and `text`, one caption a row.

    `split_files` ({"train": path, ...}; None values ignored) replaces `name_or_path` when it names any file.
    The percentages hold out that share of the training images as a validation / test split where the
    data has none (shuffled with `seed`). `data_format` declares the layout (layouts.py; `auto`: detected)."""
    files = {name: source for name, source in (split_files or {}).items() if source}
    source = ", ".join(files.values()) if files else name_or_path
    raw = (
        read_split_files(files, image_column, caption_column, data_format)
        if files
        else read_source(name_or_path, image_column, caption_column, config_name, data_format)
    )
    if not raw:
        raise DatasetError(f"{source} holds no splits.")
    splits = DatasetDict({name: split.cast_column("image", Image()) for name, split in raw.items()})
    return hold_out_by_image(
        splits, {"validation": validation_split_percentage, "test": test_split_percentage}, seed, source
    )


def image_identity(stored: dict[str, Any] | None, row: int) -> tuple[str | None, str | None]:
    """What makes two rows the same image: the file path, and the content hash of embedded bytes
    (bytes-only images are grouped by content; a shared path with different bytes stays two images).
    A row without an image stands alone: the bad-example check reports it."""
    path, data = (stored or {}).get("path"), (stored or {}).get("bytes")
    if not path and not data:
        return None, f"no image in row {row}"
    return path or None, hashlib.sha256(data).hexdigest() if data else None


def hold_out_by_image(
    splits: DatasetDict, percentages: dict[str, float], seed: int, source: str = "the data"
) -> DatasetDict:
    """Move `percentages[name]` % of the training images (every row of each) into split `name`, for each
    split the data does not have already."""
    for name, share in percentages.items():
        if not 0 <= share < 100:
            raise DatasetError(f"--{name}_split_percentage {share:g} must be at least 0 and below 100.")
    wanted = {name: share for name, share in percentages.items() if share and name not in splits}
    if not wanted:
        return splits
    if HELD_OUT_FROM not in splits:
        raise DatasetError(
            f"{source} has no '{HELD_OUT_FROM}' split to hold {', '.join(wanted)} rows out of "
            f"(its splits: {list(splits)})."
        )
    train = splits[HELD_OUT_FROM]
    keys = [
        image_identity(value, row)
        for row, value in enumerate(train.cast_column("image", Image(decode=False))["image"])
    ]
    images = list(dict.fromkeys(keys))
    random.Random(seed).shuffle(images)
    counts = {name: max(1, round(len(images) * share / 100)) for name, share in wanted.items()}
    if sum(counts.values()) >= len(images):
        held = ", ".join(f"{count} for {name}" for name, count in counts.items())
        raise DatasetError(
            f"{source} has {len(images)} training images: too few to hold out {held} and train on the rest."
        )
    destination, start = {}, 0
    for name, count in counts.items():
        destination.update(dict.fromkeys(images[start : start + count], name))
        start += count
    rows = {name: [] for name in (HELD_OUT_FROM, *wanted)}
    for row, key in enumerate(keys):
        rows[destination.get(key, HELD_OUT_FROM)].append(row)
    return DatasetDict({**splits, **{name: train.select(indices) for name, indices in rows.items()}})


def select_split(
    splits: DatasetDict, name: str, max_samples: int | None = None, required: bool = True
) -> Dataset | None:
    """One split, optionally cut to its first `max_samples` rows; a clear error if it is absent or empty."""
    if name not in splits:
        if not required:
            return None
        raise DatasetError(f"no split '{name}'; the data set has {list(splits)}. Choose one with the split flags.")
    split = splits[name]
    if max_samples is not None:
        split = split.select(range(min(max_samples, len(split))))
    if len(split) == 0:
        raise DatasetError(f"split '{name}' is empty.")
    return split
