"""Which format a caption data set is in: declared with `--data_format`, or detected from what is there (`auto`).

A file's format comes from its suffix and, for JSON, its structure (COCO, Karpathy) or its columns (chat rows).
A folder's is decided once, here, for loading and streaming alike:
- a `save_to_disk` folder is `saved`;
- top-level table files that hold captions (the image and caption columns, or COCO / Karpathy / chat) are read
  as caption files; other top-level tables (a data set's `dataset_infos.json`, a `labels.json`) are left out,
  and said so;
- photos with imagefolder metadata (`metadata.jsonl/csv/parquet` naming `file_name`), in split subfolders or
  beside it, are an `imagefolder`;
- both at once is an error naming the two readings and the `--data_format` that chooses;
- `.tar` shards alone are `webdataset` (read with `--streaming`).
A declared format skips the guessing (as LLaMA-Factory's `dataset_info.json` declares each set's format) and
data that is not in it is a clear error.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from alt_text_recipes.data.errors import DatasetError
from alt_text_recipes.data.images import IMAGE_SUFFIXES
from alt_text_recipes.data.logs import get_logger
from alt_text_recipes.data.table_files import TABLE_BUILDERS, first_row, require_content

logger = get_logger(__name__)

DATA_FORMATS = {
    "auto": "detected from what is there",
    "csv": "CSV caption files (separated by , ; tab or |)",
    "json": "JSON or JSON lines caption rows",
    "parquet": "Parquet caption files",
    "imagefolder": "an imagefolder (photos with metadata.jsonl/csv/parquet naming file_name)",
    "coco": "COCO captions JSON (images + annotations)",
    "karpathy": "Karpathy split JSON (images with sentences and split)",
    "chat": "chat rows (messages or conversations, with images)",
    "webdataset": "WebDataset .tar shards",
    "saved": "a datasets save_to_disk folder",
}
CAPTION_FILE_SUFFIXES = {
    "csv": {".csv", ".tsv"},
    "json": {".json", ".jsonl"},
    "parquet": {".parquet"},
    "coco": {".json"},
    "karpathy": {".json"},
    "chat": set(TABLE_BUILDERS),
}
ACCEPTED = (
    "a CSV/JSON/JSONL/Parquet file or glob of image paths (or bytes) and captions, a folder of photos "
    "holding such a file, COCO captions or Karpathy split JSON, chat rows (messages or conversations with "
    "images), an imagefolder folder, a save_to_disk folder, or a Hub dataset id"
)
FOLDER_FORMATS = ("imagefolder", "webdataset", "saved")
IMAGEFOLDER_METADATA = ("metadata.csv", "metadata.jsonl", "metadata.parquet")  # the names `datasets` reads
SPLIT_IN_NAME = re.compile(r"(?<![a-z])(train|training|validation|valid|val|dev|test|testing)(?![a-z])")
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
}


def json_document(file: Path) -> object | None:
    """A `.json` file that is one JSON document (COCO, Karpathy, a list of rows); None for JSON lines."""
    require_content(file)
    with file.open(encoding="utf-8-sig") as handle:  # -sig: also with the byte-order mark some editors write
        try:
            return json.load(handle)
        except json.JSONDecodeError:
            return None


def captions_json_format(document: dict) -> str | None:
    """`coco` (`images` + `annotations`), `karpathy` (`images` with `sentences`), or None."""
    if "annotations" in document:
        return "coco"
    images = document.get("images")
    first = images[0] if isinstance(images, list) and images else {}
    return "karpathy" if isinstance(first, dict) and "sentences" in first else None


def file_format(file: Path, image_column: str, caption_column: str) -> str | None:
    """The format a table file holds captions in, or None if it holds none that can be read (an unrelated file)."""
    try:
        document = json_document(file) if file.suffix.lower() == ".json" else None
        if isinstance(document, dict) and "images" in document:
            return captions_json_format(document)
        columns = set(first_row(file))
    except DatasetError:
        return None
    if {image_column, caption_column} <= columns:
        return TABLE_BUILDERS[file.suffix.lower()]
    if caption_column not in columns and {"messages", "conversations"} & columns:
        return "chat"
    return None


def wrong_format(source: Path | str, declared: str, what: str, detected: str | None = None) -> DatasetError:
    """A declared format the data is not in, with the format it is in where that is known."""
    hint = f"; it reads as {detected}: pass --data_format {detected} (or auto)" if detected else ""
    return DatasetError(f"--data_format {declared}: {source} {what}{hint}.")


def needs_streaming(source: Path | str) -> DatasetError:
    return DatasetError(f"{source} holds WebDataset .tar shards, which are read as a stream: add --streaming.")


def is_saved_to_disk(folder: Path) -> bool:
    return any((folder / name).exists() for name in ("dataset_dict.json", "dataset_info.json", "state.json"))


def has_photos(folder: Path) -> bool:
    return any(path.suffix.lower() in IMAGE_SUFFIXES for path in folder.rglob("*"))


def has_shards(folder: Path) -> bool:
    return any(folder.glob("**/*.tar"))


def imagefolder_files(folder: Path) -> dict[str, object]:
    """`load_dataset("imagefolder", ...)`'s arguments for `folder`. Photos beside a top-level metadata file are
    one train split: given as data_dir, datasets 5.2 would read them without their captions."""
    if any(_is_imagefolder_metadata(folder / name) for name in IMAGEFOLDER_METADATA):
        return {"data_files": {"train": str(folder / "**")}}
    return {"data_dir": str(folder)}


def folder_format(
    folder: Path, image_column: str = "image", caption_column: str = "text", data_format: str = "auto"
) -> tuple[str, list[Path]]:
    """How `folder` is read: its format (`auto` for caption files each read in its own), and the caption files
    read, for the caption-file formats."""
    if data_format != "auto":
        return data_format, _declared_files(folder, data_format)
    if is_saved_to_disk(folder):
        return "saved", []
    candidates = [file for file in _top_tables(folder) if not _is_imagefolder_metadata(file)]
    formats = {file: file_format(file, image_column, caption_column) for file in candidates}
    captions = [file for file in candidates if formats[file]]
    metadata = _imagefolder_metadata(folder)
    if captions and metadata:
        raise _two_readings(folder, captions, {formats[file] for file in captions}, metadata)
    if captions:
        # A file named after a split is meant as captions: read, its error says what is wrong with it.
        read = [file for file in candidates if formats[file] or SPLIT_IN_NAME.search(file.stem.lower())]
        _say_left_out(folder, [file for file in candidates if file not in read], image_column, caption_column)
        return "auto", read
    if metadata:
        _say_left_out(folder, candidates, image_column, caption_column)
        return "imagefolder", []
    if candidates:  # none holds captions: read, so that the error names their columns
        return "auto", candidates
    if has_photos(folder):
        return "imagefolder", []
    if has_shards(folder):
        return "webdataset", []
    found = sorted(path.name for path in folder.iterdir())[:10]
    raise DatasetError(
        f"{folder} holds no photos and no caption file (found: {found or 'nothing'}). Accepted: {ACCEPTED}."
    )


def _declared_files(folder: Path, data_format: str) -> list[Path]:
    """The caption files a declared format reads from `folder` (none for the folder formats), or why it cannot."""
    missing = {
        "saved": not is_saved_to_disk(folder) and "has no dataset_dict.json, dataset_info.json or state.json",
        "imagefolder": not has_photos(folder) and "holds no photos",
        "webdataset": not has_shards(folder) and "holds no .tar shards",
    }
    if data_format in FOLDER_FORMATS:
        if missing[data_format]:
            raise wrong_format(folder, data_format, f"is not {DATA_FORMATS[data_format]}: it {missing[data_format]}")
        return []
    suffixes = CAPTION_FILE_SUFFIXES[data_format]
    files = [file for file in _top_tables(folder) if file.suffix.lower() in suffixes]
    if not files:
        found = sorted(path.name for path in folder.iterdir())[:10]
        what = f"holds no {'/'.join(sorted(suffixes))} file at its top (found: {found})"
        raise wrong_format(folder, data_format, what)
    return files


def _top_tables(folder: Path) -> list[Path]:
    return [
        file
        for file in sorted(folder.iterdir())
        if file.is_file() and not file.name.startswith(".") and file.suffix.lower() in TABLE_BUILDERS
    ]


def _is_imagefolder_metadata(file: Path) -> bool:
    """imagefolder's own metadata file (a `file_name` column), read as the imagefolder loader reads it."""
    if file.name not in IMAGEFOLDER_METADATA or not file.is_file():
        return False
    try:
        return "file_name" in first_row(file, sniff_separator=False)
    except DatasetError:
        return False  # read as a caption file: its error says what is wrong


def _imagefolder_metadata(folder: Path) -> list[Path]:
    """imagefolder metadata files beside photos: at the top of `folder` or in its (split) subfolders."""
    places = [folder, *sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))]
    return [
        place / name
        for place in places
        for name in IMAGEFOLDER_METADATA
        if _is_imagefolder_metadata(place / name) and has_photos(place)
    ]


def _two_readings(folder: Path, captions: list[Path], formats: set[str], metadata: list[Path]) -> DatasetError:
    return DatasetError(
        f"{folder} can be read two ways: as the caption file(s) {[file.name for file in captions]} at its top, or "
        f"as an imagefolder of the photos that {[str(file.relative_to(folder)) for file in metadata]} name. Pass "
        f"--data_format {' or '.join(sorted(formats))} for the first, --data_format imagefolder for the second."
    )


def _say_left_out(folder: Path, files: list[Path], image_column: str, caption_column: str) -> None:
    if files:
        logger.info(
            f"{folder}: not read as captions: {[file.name for file in files]} (no {image_column!r} and "
            f"{caption_column!r} columns, and not COCO, Karpathy or chat rows)."
        )
