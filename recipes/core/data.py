"""Load caption data sets into the two columns the collator reads: `image` (PIL) and `text`.

Three sources are accepted:
- an `imagefolder` folder (`<split>/metadata.jsonl` with `file_name` and `text`, as `data/gourmetgram-mini`),
- a `datasets.save_to_disk` folder (a `DatasetDict` or a single `Dataset`) with image and caption columns,
- a Hub dataset id.
`image_column` / `caption_column` map other column names onto `image` / `text`.
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset, DatasetDict, Image, load_dataset, load_from_disk

from .errors import RecipeError
from .paths import is_local, resolve_local


class DatasetError(RecipeError):
    """A data set that cannot be used as given; the message says what to change."""


def _is_saved_to_disk(folder: Path) -> bool:
    return (folder / "dataset_dict.json").exists() or (folder / "dataset_info.json").exists() \
        or (folder / "state.json").exists()


def _load_raw(name_or_path: str, config_name: str | None) -> DatasetDict:
    if is_local(name_or_path):
        folder = Path(resolve_local(name_or_path))
        if _is_saved_to_disk(folder):
            loaded = load_from_disk(str(folder))
            return loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})
        return load_dataset("imagefolder", data_dir=str(folder))
    return load_dataset(name_or_path, config_name)


def _standardise(split: Dataset, image_column: str, caption_column: str, source: str, split_name: str) -> Dataset:
    missing = [column for column in (image_column, caption_column) if column not in split.column_names]
    if missing:
        raise DatasetError(
            f"{source} split '{split_name}' has no column {', '.join(map(repr, missing))}; its columns are "
            f"{split.column_names}. Pass --image_column / --caption_column to name the right ones."
        )
    split = split.select_columns([image_column, caption_column])
    if image_column != "image":
        split = split.rename_column(image_column, "image")
    if caption_column != "text":
        split = split.rename_column(caption_column, "text")
    if not isinstance(split.features["image"], Image):
        split = split.cast_column("image", Image())  # file paths or bytes become decoded images
    return split


def load_caption_dataset(
    name_or_path: str,
    image_column: str = "image",
    caption_column: str = "text",
    config_name: str | None = None,
) -> DatasetDict:
    """Load every split of a caption data set with columns renamed to `image` and `text`."""
    raw = _load_raw(name_or_path, config_name)
    if not raw:
        raise DatasetError(f"{name_or_path} holds no splits.")
    return DatasetDict({
        name: _standardise(split, image_column, caption_column, name_or_path, name) for name, split in raw.items()
    })


def select_split(splits: DatasetDict, name: str, max_samples: int | None = None, required: bool = True) -> Dataset | None:
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
