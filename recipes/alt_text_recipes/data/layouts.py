"""Recognise how a caption data set is laid out, and read it into `image` / `text` rows.

People hand over captions in many shapes; each is detected from what is there, or declared with `--data_format`
(data_formats.py decides which, and reads a folder's layout the same way for streaming):
- a CSV (separated by `,` `;` tab or `|`), JSON, JSONL or Parquet file (or a glob of them) with an image column
  (paths relative to the file's folder, absolute paths, or image bytes) and a caption column;
- such a file in a folder of photos (the "photos + captions.csv" hand-off); a file named after a split
  (`train.csv`, `val.jsonl`, `captions_test2017.json`) holds that split, any other the training rows;
- COCO captions JSON (`images` + `annotations`) and Karpathy's split file (`images` with `sentences` and
  `split`), the photos beside the file, in a folder beside it, or in a folder beside its own (COCO's
  `annotations/` next to `train2017/`);
- chat rows as TRL and LLaMA-Factory write them (`messages`, or sharegpt `conversations`, with `images`):
  the assistant's answer is the caption;
- an `imagefolder` folder (photos with `metadata.jsonl`/`metadata.csv` naming `file_name`), a
  `datasets.save_to_disk` folder, or a Hub dataset id.
Every split comes out with `image` (an undecoded `datasets.Image` keeping the real path) and `text` (one
caption a row: an image with five captions gives five rows with the same path).
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from glob import glob
from pathlib import Path

from datasets import (
    Dataset,
    DatasetDict,
    Features,
    Image,
    List,
    Value,
    concatenate_datasets,
    load_dataset,
    load_from_disk,
)

from alt_text_recipes.data.data_formats import (
    ACCEPTED,
    CAPTION_FILE_SUFFIXES,
    DATA_FORMATS,
    FOLDER_FORMATS,
    SPLIT_IN_NAME,
    SPLIT_NAMES,
    captions_json_format,
    file_format,
    folder_format,
    imagefolder_files,
    json_document,
    needs_streaming,
    wrong_format,
)
from alt_text_recipes.data.errors import DatasetError
from alt_text_recipes.data.paths import REPO_ROOT, places_looked
from alt_text_recipes.data.table_files import TABLE_BUILDERS, read_table

URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "validation", "test": "test"}
ROWS = Features({"image": Image(decode=False), "text": Value("string")})


def is_hub_id(source: str) -> bool:
    """Whether `source` names a Hub dataset rather than a local file, folder, glob or URL."""
    return not (
        URL.match(source) or _is_glob(source) or _local_path(source) or Path(source).suffix.lower() in TABLE_BUILDERS
    )


def read_source(
    source: str,
    image_column: str = "image",
    caption_column: str = "text",
    config_name: str | None = None,
    data_format: str = "auto",
) -> DatasetDict:
    """Every split of the data set at `source` as `image` / `text` rows, in the layout `data_format` declares
    (a DATA_FORMATS value; `auto`: the layout detected from what is there)."""
    if URL.match(source):
        raise DatasetError(
            f"{source} is a URL; data sets are read from local files or the Hub, never downloaded "
            "from a URL at training time. Download it and pass the local path."
        )
    if data_format == "webdataset":
        raise needs_streaming(source)
    if _is_glob(source):
        return _read_files(_expand_glob(source), image_column, caption_column, data_format)
    path = _local_path(source)
    if path is not None:
        return (
            _read_files([path], image_column, caption_column, data_format)
            if path.is_file()
            else _read_folder(path, image_column, caption_column, data_format)
        )
    if Path(source).suffix.lower() in TABLE_BUILDERS or source.startswith((".", "/", "~")) or data_format != "auto":
        declared = f"; --data_format {data_format} reads local data (a Hub id needs auto)" * (data_format != "auto")
        raise DatasetError(f"no file or folder {source} (looked in {places_looked()}){declared}.")
    return _read_hub(source, image_column, caption_column, config_name)


def read_split_files(
    files: dict[str, str], image_column: str = "image", caption_column: str = "text", data_format: str = "auto"
) -> DatasetDict:
    """`--train_file` / `--validation_file` / `--test_file`: each source gives the split it is named for."""
    splits = {}
    for name, source in files.items():
        read = read_source(source, image_column, caption_column, data_format=data_format)
        if name not in read and len(read) > 1:
            raise DatasetError(
                f"{source} holds the splits {list(read)} and no '{name}' split; pass it as "
                "--dataset_name to use its own splits."
            )
        splits[name] = read[name] if name in read else next(iter(read.values()))
    return DatasetDict(splits)


def standardise(
    split: Dataset, image_column: str, caption_column: str, source: str, split_name: str, root: Path | None = None
) -> Dataset:
    """Keep the image and caption columns as `image` (undecoded) and `text`, one caption a row; with `root`,
    image paths are resolved against it (the folder of the file that names them)."""
    missing = [column for column in (image_column, caption_column) if column not in split.column_names]
    if missing:
        raise DatasetError(
            f"{source} split '{split_name}' has no column {', '.join(map(repr, missing))}; its columns are "
            f"{split.column_names}. Pass --image_column / --caption_column to name the right ones."
        )
    split = split.select_columns([image_column, caption_column])
    split = split.rename_columns(
        {old: new for old, new in ((image_column, "image"), (caption_column, "text")) if old != new}
    )
    if root is not None and getattr(split.features["image"], "dtype", None) in ("string", "large_string"):
        split = split.map(
            lambda batch: {"image": [image_path(value, root) for value in batch["image"]]},
            batched=True,
            desc="resolving image paths",
        )
    split = split.cast_column("image", Image(decode=False))
    if isinstance(split.features["text"], List):
        split = split.map(_one_row_per_caption, batched=True, features=ROWS, desc="one row per caption")
    return split


def image_path(value: str | None, root: Path) -> str | None:
    """An image path from the data, made absolute: relative ones must stay inside `root`; URLs are refused."""
    if not value:
        return None  # reported as "no image" by the bad-example check
    if URL.match(value):
        raise DatasetError(
            f"image {value} is a URL; images are not downloaded at training time. Download them "
            f"and name the local files (relative to {root}, or absolute)."
        )
    if os.path.isabs(value):
        return os.path.normpath(value)
    root = os.path.abspath(root)
    resolved = os.path.normpath(os.path.join(root, value))
    if os.path.commonpath([resolved, root]) != root:
        raise DatasetError(
            f"image path {value} points outside the data folder {root}; give images outside it as absolute paths."
        )
    return resolved


def _one_row_per_caption(batch: dict) -> dict:
    rows = {"image": [], "text": []}
    for image, captions in zip(batch["image"], batch["text"], strict=True):
        for caption in captions or [None]:  # an image without captions stays, to be counted as "missing caption"
            rows["image"].append(image)
            rows["text"].append(caption)
    return rows


def _is_glob(source: str) -> bool:
    return any(character in source for character in "*?[")


def _local_path(source: str) -> Path | None:
    """`source` as an existing file or folder, relative to the current directory or the repository root."""
    for candidate in (Path(source).expanduser(), REPO_ROOT / source):
        if candidate.exists():
            return candidate.absolute()
    return None


def _expand_glob(pattern: str) -> list[Path]:
    for base in (Path.cwd(), REPO_ROOT):
        files = sorted(Path(path) for path in glob(os.path.join(base, os.path.expanduser(pattern)), recursive=True))
        if files:
            unreadable = [file.name for file in files if file.suffix.lower() not in TABLE_BUILDERS]
            if unreadable:
                raise DatasetError(f"{pattern} matches files that are not CSV/JSON/JSONL/Parquet: {unreadable[:5]}.")
            return files
    raise DatasetError(f"{pattern} matches no file (looked in {places_looked()}).")


def _read_hub(source: str, image_column: str, caption_column: str, config_name: str | None) -> DatasetDict:
    try:
        raw = load_dataset(source, config_name)
    except (ConnectionError, FileNotFoundError) as error:
        raise DatasetError(
            f"{source} is no local file or folder, and not a Hub dataset that can be loaded "
            f"({error}). Accepted: {ACCEPTED}."
        ) from None
    return DatasetDict(
        {name: standardise(split, image_column, caption_column, source, name) for name, split in raw.items()}
    )


def _read_folder(folder: Path, image_column: str, caption_column: str, data_format: str) -> DatasetDict:
    layout, files = folder_format(folder, image_column, caption_column, data_format)
    if layout == "webdataset":
        raise needs_streaming(folder)
    if layout not in FOLDER_FORMATS:
        return _read_files(files, image_column, caption_column, data_format)
    if layout == "saved":
        loaded = load_from_disk(str(folder))
    else:
        loaded = load_dataset("imagefolder", **imagefolder_files(folder))
    raw = loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})
    return DatasetDict(
        {name: standardise(split, image_column, caption_column, str(folder), name) for name, split in raw.items()}
    )


def _read_files(files: list[Path], image_column: str, caption_column: str, data_format: str = "auto") -> DatasetDict:
    """Each file read with its paths relative to its own folder; a file named after a split gives that split."""
    parts = defaultdict(list)
    for file in files:
        read = _read_file(file, image_column, caption_column, data_format)
        named = SPLIT_IN_NAME.search(file.stem.lower())
        if named and list(read) == ["train"]:
            read = {SPLIT_NAMES[named.group(1)]: read["train"]}
        for name, split in read.items():
            parts[name].append(split)
    return DatasetDict({name: concatenate_datasets(splits) for name, splits in parts.items()})


def _read_file(file: Path, image_column: str, caption_column: str, data_format: str = "auto") -> DatasetDict:
    """One caption file in `data_format` (`auto`: COCO / Karpathy by their structure, chat rows by their columns)."""
    _require_suffix(file, data_format, image_column, caption_column)
    reads_json = file.suffix.lower() == ".json" and data_format in ("auto", "coco", "karpathy")
    document = json_document(file) if reads_json else None
    if isinstance(document, dict) and "images" in document:
        return _read_captions_json(document, file, data_format)
    if data_format in ("coco", "karpathy"):
        raise _not_declared(file, data_format, "has no `images` list", image_column, caption_column)
    table, image_column, caption_column = _table_rows(
        read_table(file), file, data_format, image_column, caption_column
    )
    return DatasetDict({"train": standardise(table, image_column, caption_column, str(file), "train", file.parent)})


def _require_suffix(file: Path, data_format: str, image_column: str, caption_column: str) -> None:
    if data_format in FOLDER_FORMATS:
        raise wrong_format(file, data_format, f"is a file; {data_format} reads a folder: {DATA_FORMATS[data_format]}")
    suffix = file.suffix.lower()
    if suffix not in TABLE_BUILDERS:
        raise DatasetError(f"{file} is not a CSV, JSON, JSONL or Parquet file. Accepted: {ACCEPTED}.")
    if data_format != "auto" and suffix not in CAPTION_FILE_SUFFIXES[data_format]:
        suffixes = "/".join(sorted(CAPTION_FILE_SUFFIXES[data_format]))
        what = f"is not {DATA_FORMATS[data_format]} (a {suffixes} file)"
        raise _not_declared(file, data_format, what, image_column, caption_column)


def _table_rows(
    table: Dataset, file: Path, data_format: str, image_column: str, caption_column: str
) -> tuple[Dataset, str, str]:
    """A table's rows and its image and caption columns: chat rows turned into image + answer where they are
    declared, or detected (`messages` / `conversations` and no caption column)."""
    columns = table.column_names
    chat = {"messages", "conversations"} & set(columns)
    if data_format == "chat" or (data_format == "auto" and chat and caption_column not in columns):
        if not chat:
            what = f"has no `messages` or `conversations` column (its columns: {columns})"
            raise _not_declared(file, data_format, what, image_column, caption_column)
        return _chat_rows(table, file), "image", "text"
    if data_format != "auto" and not {image_column, caption_column} <= set(columns):
        detected = file_format(file, image_column, caption_column)  # else standardise names the columns there are
        if detected and detected != data_format:
            raise wrong_format(file, data_format, f"has no column {image_column!r} / {caption_column!r}", detected)
    return table, image_column, caption_column


def _not_declared(file: Path, declared: str, what: str, image_column: str, caption_column: str) -> DatasetError:
    """`file` is not in the declared format: said with the format it is in, where one is detected."""
    detected = file_format(file, image_column, caption_column)
    return wrong_format(file, declared, what, detected if detected != declared else None)


def _read_captions_json(document: dict, file: Path, data_format: str) -> DatasetDict:
    """COCO captions (`images` + `annotations`) or Karpathy's split file (`images` with `sentences`)."""
    layout = captions_json_format(document)
    if data_format != "auto" and layout != data_format:
        raise wrong_format(file, data_format, f"is not {DATA_FORMATS[data_format]}", layout)
    if layout is None:
        raise DatasetError(
            f"{file} has `images` but neither COCO `annotations` nor Karpathy `sentences`. Accepted: {ACCEPTED}."
        )
    rows = _coco_rows(document, file) if layout == "coco" else _karpathy_rows(document, file)
    root = _image_root(file.parent, next((path for split in rows.values() for path, _ in split), ""))
    return DatasetDict(
        {
            name: standardise(
                Dataset.from_dict({"image": [path for path, _ in split], "text": [caption for _, caption in split]}),
                "image",
                "text",
                str(file),
                name,
                root,
            )
            for name, split in rows.items()
        }
    )


def _coco_rows(document: dict, file: Path) -> dict[str, list[tuple[str, str | None]]]:
    paths = {image["id"]: image["file_name"] for image in document["images"]}
    unknown = sorted({note["image_id"] for note in document["annotations"]} - set(paths))
    if unknown:
        raise DatasetError(f"{file}: annotations name image ids that `images` does not list: {unknown[:5]}.")
    return {"train": [(paths[note["image_id"]], note.get("caption")) for note in document["annotations"]]}


def _karpathy_rows(document: dict, file: Path) -> dict[str, list[tuple[str, str | None]]]:
    images = document["images"]
    unknown = sorted({image.get("split") for image in images} - set(KARPATHY_SPLITS), key=str)
    if unknown:
        raise DatasetError(f"{file}: Karpathy splits must be {sorted(KARPATHY_SPLITS)}; found {unknown}.")
    rows = defaultdict(list)
    for image in images:
        path = "/".join(part for part in (image.get("filepath"), image["filename"]) if part)
        captions = [sentence.get("raw") for sentence in image["sentences"] or [{}]]
        rows[KARPATHY_SPLITS[image["split"]]] += [(path, caption) for caption in captions]
    return rows


def _image_root(folder: Path, first_image: str) -> Path:
    """Where the photos a captions JSON names live: beside it, in a folder beside it, or one folder up
    (COCO's `annotations/` next to `train2017/`). None found: beside it (the data check reports them missing)."""
    candidates = [
        folder,
        *sorted(p for p in folder.iterdir() if p.is_dir()),
        folder.parent,
        *sorted(p for p in folder.parent.iterdir() if p.is_dir() and p != folder),
    ]
    return next((candidate for candidate in candidates if (candidate / first_image).is_file()), folder)


def _chat_rows(table: Dataset, file: Path) -> Dataset:
    """Chat rows (TRL / LLaMA-Factory `messages`, sharegpt `conversations`) as image path and caption."""
    turns_column = "messages" if "messages" in table.column_names else "conversations"
    images_column = next((name for name in ("images", "image") if name in table.column_names), None)
    if images_column is None:
        raise DatasetError(f"{file} has chat rows ('{turns_column}') but no 'images' column naming each row's photo.")
    images, captions = [], []
    for row, (turns, row_images) in enumerate(zip(table[turns_column], table[images_column], strict=True)):
        row_images = [row_images] if isinstance(row_images, str) else row_images or []
        answers = [
            _turn_text(turn) for turn in turns if (turn.get("role") or turn.get("from")) in ("assistant", "gpt")
        ]
        if len(row_images) > 1 or len(answers) > 1:
            raise DatasetError(
                f"{file} row {row} has {len(row_images)} images and {len(answers)} answers; each row "
                "must be one photo and one assistant answer (its alt text)."
            )
        images.append(row_images[0] if row_images else None)
        captions.append(answers[0] if answers else None)
    return Dataset.from_dict({"image": images, "text": captions})


def _turn_text(turn: dict) -> str:
    """A turn's text: a string (without `<image>` placeholders) or the text parts of a content list."""
    content = turn.get("content", turn.get("value"))
    if isinstance(content, list):
        content = " ".join(part.get("text") or "" for part in content if part.get("type") == "text")
    return (content or "").replace("<image>", "").strip()
