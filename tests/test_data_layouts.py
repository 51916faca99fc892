"""Bring your own photos: every caption layout loads the right rows and splits, and trains the tiny twin.

Each test writes its data from a few photos of the embedded set: caption files (CSV, JSON lines, Parquet with
image bytes, globs), a folder of photos with its captions file, COCO and Karpathy JSON, chat rows, split
subfolders with imagefolder metadata, a save_to_disk folder; each detected, or declared with --data_format.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
from datasets import Dataset, DatasetDict, Image

from alt_text_recipes.data.errors import RecipeError
from alt_text_recipes.data.sources import DatasetError, load_caption_dataset
from alt_text_recipes.train.arguments import parse_recipe_args
from alt_text_recipes.train.loop import run

from conftest import DATASET

PHOTOS = 12
CAPTIONS_PER_PHOTO = 2  # COCO, Karpathy and list captions: one row per (photo, caption)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A folder `photos/` of 12 embedded photos, and their captions by file name."""
    rows = [json.loads(line) for line in (DATASET / "train" / "metadata.jsonl").read_text().splitlines()[:PHOTOS]]
    folder = tmp_path_factory.mktemp("hand-off") / "photos"
    folder.mkdir()
    for row in rows:
        shutil.copy(DATASET / "train" / row["file_name"], folder / row["file_name"])
    return folder, {row["file_name"]: row["text"] for row in rows}


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _csv(photos, path: Path) -> Path:
    """`image_path,alt` with paths relative to the CSV (photos/x.jpg), the last one absolute."""
    folder, captions = photos
    lines = ["image_path,alt"] + [f'{folder.name}/{name},"{text}"' for name, text in captions.items()]
    lines[-1] = f'{folder / list(captions)[-1]},"{list(captions.values())[-1]}"'
    path.write_text("\n".join(lines) + "\n")
    return path


def _coco(photos, root: Path) -> Path:
    """COCO's download layout: annotations/captions.json beside train2017/ (two captions a photo)."""
    folder, captions = photos
    shutil.copytree(folder, root / "train2017")
    images = [{"id": index, "file_name": name, "width": 128, "height": 128} for index, name in enumerate(captions)]
    notes = [
        {"id": 10 * image["id"] + k, "image_id": image["id"], "caption": f"{captions[image['file_name']]} ({k})"}
        for image in images
        for k in range(CAPTIONS_PER_PHOTO)
    ]
    (root / "annotations").mkdir()
    path = root / "annotations" / "captions_train2017.json"
    path.write_text(json.dumps({"info": {}, "images": images, "annotations": notes}))
    return path


KARPATHY_SPLITS = [
    "train",
    "train",
    "train",
    "train",
    "restval",
    "restval",
    "val",
    "val",
    "test",
    "test",
    "test",
    "test",
]


def _karpathy(photos, root: Path) -> Path:
    folder, captions = photos
    shutil.copytree(folder, root / "val2014")
    images = [
        {
            "filepath": "val2014",
            "filename": name,
            "split": split,
            "imgid": index,
            "sentences": [{"raw": f"{captions[name]} ({k})", "tokens": []} for k in range(CAPTIONS_PER_PHOTO)],
        }
        for index, (name, split) in enumerate(zip(captions, KARPATHY_SPLITS, strict=False))
    ]
    path = root / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


def _chat(photos, path: Path, style: str) -> Path:
    """Chat rows as TRL writes them (content parts), as LLaMA-Factory does (`<image>` in a string), or sharegpt."""
    folder, captions = photos
    rows = []
    for name, text in captions.items():
        image = f"{folder.name}/{name}"
        if style == "trl":
            turns = [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]},
                {"role": "assistant", "content": [{"type": "text", "text": text}]},
            ]
            rows.append({"messages": turns, "images": [image]})
        elif style == "llama_factory":
            rows.append(
                {
                    "messages": [
                        {"role": "user", "content": "<image>Describe it."},
                        {"role": "assistant", "content": text},
                    ],
                    "images": [image],
                }
            )
        else:
            rows.append(
                {
                    "conversations": [
                        {"from": "human", "value": "<image>\nDescribe it."},
                        {"from": "gpt", "value": text},
                    ],
                    "images": [image],
                }
            )
    return _write_jsonl(path, rows)


def _parquet_with_bytes(photos, path: Path) -> Path:
    folder, captions = photos
    Dataset.from_dict(
        {"jpeg": [(folder / name).read_bytes() for name in captions], "caption": list(captions.values())}
    ).to_parquet(str(path))
    return path


def _split_folders(photos, root: Path) -> Path:
    """A downloaded data set's layout: train/ (8 photos) and validation/ (4), each with its metadata.jsonl."""
    folder, captions = photos
    names = list(captions)
    for split, chosen in (("train", names[:8]), ("validation", names[8:])):
        (root / split).mkdir(parents=True)
        for name in chosen:
            shutil.copy(folder / name, root / split / name)
        _write_jsonl(root / split / "metadata.jsonl", [{"file_name": n, "text": captions[n]} for n in chosen])
    return root


def _saved(photos, root: Path) -> Path:
    folder, captions = photos
    rows = {"image": [str(folder / name) for name in captions], "text": list(captions.values())}
    DatasetDict({"train": Dataset.from_dict(rows)}).save_to_disk(str(root / "saved"))
    return root / "saved"


def _paths(split) -> list[str]:
    return [value["path"] for value in split.cast_column("image", Image(decode=False))["image"]]


def test_csv_with_relative_and_absolute_paths_is_read_with_real_paths(photos, monkeypatch):
    folder, captions = photos
    _csv(photos, folder.parent / "captions.csv")
    monkeypatch.chdir(folder.parent)  # the command of the issue: --dataset_name captions.csv
    loaded = load_caption_dataset("captions.csv", "image_path", "alt")
    train = loaded["train"]
    assert list(loaded) == ["train"] and train.column_names == ["image", "text"]
    assert train["text"] == list(captions.values())
    assert _paths(train) == [str(folder / name) for name in captions]  # the real paths, for grouping by image
    assert train[0]["image"].size == (128, 128)


def test_folder_of_photos_with_its_captions_file(photos, tmp_path):
    folder, captions = photos
    hand_off = tmp_path / "hand-off"
    shutil.copytree(folder, hand_off)
    _write_jsonl(hand_off / "alt_text.jsonl", [{"file": name, "alt": text} for name, text in captions.items()])
    train = load_caption_dataset(str(hand_off), "file", "alt")["train"]
    assert train["text"] == list(captions.values()) and _paths(train) == [str(hand_off / name) for name in captions]
    # imagefolder's own metadata.csv (`file_name`) is still read as an imagefolder
    (hand_off / "alt_text.jsonl").unlink()
    (hand_off / "metadata.csv").write_text("file_name,text\n" + "".join(f'{n},"{t}"\n' for n, t in captions.items()))
    assert sorted(load_caption_dataset(str(hand_off))["train"]["text"]) == sorted(captions.values())


def test_glob_of_files_named_after_splits_and_the_split_file_flags(photos):
    folder, captions = photos
    names = list(captions)
    shards = folder.parent / "shards"
    shards.mkdir(exist_ok=True)
    for split, chosen in (("train", names[:8]), ("val", names[8:10]), ("test", names[10:])):
        _write_jsonl(shards / f"{split}.jsonl", [{"image": str(folder / n), "text": captions[n]} for n in chosen])
    globbed = load_caption_dataset(str(shards / "*.jsonl"))
    assert {name: len(split) for name, split in globbed.items()} == {"test": 2, "train": 8, "validation": 2}
    flagged = load_caption_dataset(
        "ignored",
        split_files={"train": str(shards / "train.jsonl"), "validation": str(shards / "test.jsonl"), "test": None},
    )
    assert {name: len(split) for name, split in flagged.items()} == {"train": 8, "validation": 2}


def test_parquet_with_image_bytes(photos, tmp_path):
    folder, captions = photos
    train = load_caption_dataset(str(_parquet_with_bytes(photos, tmp_path / "photos.parquet")), "jpeg", "caption")[
        "train"
    ]
    assert train["text"] == list(captions.values()) and train[3]["image"].size == (128, 128)


def test_coco_captions_give_one_row_per_caption_with_the_photo_path_kept(photos, tmp_path):
    folder, captions = photos
    train = load_caption_dataset(str(_coco(photos, tmp_path / "coco")))["train"]
    assert len(train) == PHOTOS * CAPTIONS_PER_PHOTO
    paths = _paths(train)
    assert paths[0] == paths[1] == str(tmp_path / "coco" / "train2017" / list(captions)[0])
    assert train["text"][:2] == [f"{list(captions.values())[0]} ({k})" for k in range(2)]


def test_karpathy_splits_come_from_the_file_with_restval_in_train(photos, tmp_path):
    loaded = load_caption_dataset(str(_karpathy(photos, tmp_path / "karpathy")), validation_split_percentage=50)
    rows = {name: len(split) for name, split in loaded.items()}
    assert rows == {
        "train": 6 * CAPTIONS_PER_PHOTO,
        "validation": 2 * CAPTIONS_PER_PHOTO,
        "test": 4 * CAPTIONS_PER_PHOTO,
    }
    assert all(Path(path).parent.name == "val2014" for path in _paths(loaded["test"]))


@pytest.mark.parametrize("style", ["trl", "llama_factory", "sharegpt"])
def test_chat_rows_give_the_assistant_answer_as_caption(photos, style):
    folder, captions = photos
    train = load_caption_dataset(str(_chat(photos, folder.parent / f"chat_{style}.jsonl", style)))["train"]
    assert train["text"] == list(captions.values()) and _paths(train) == [str(folder / n) for n in captions]


def test_held_out_splits_are_grouped_by_image_and_seeded(photos, tmp_path):
    coco = str(_coco(photos, tmp_path / "coco"))

    def held_out(seed):
        loaded = load_caption_dataset(coco, validation_split_percentage=25, test_split_percentage=25, seed=seed)
        return {name: _paths(split) for name, split in loaded.items()}

    first = held_out(42)
    assert {name: len(set(paths)) for name, paths in first.items()} == {"train": 6, "validation": 3, "test": 3}
    assert sum(map(len, first.values())) == PHOTOS * CAPTIONS_PER_PHOTO  # every caption of every photo kept
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not set(first[a]) & set(first[b])
    assert held_out(42) == first
    assert held_out(7) != first
    with pytest.raises(DatasetError, match="--test_split_percentage 100 must be at least 0 and below 100"):
        load_caption_dataset(coco, test_split_percentage=100)


def test_unusable_sources_are_one_clear_error_each(photos, tmp_path):
    folder, captions = photos
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "README.txt").write_text("photos coming soon")
    cases = {
        str(notes): r"holds no photos and no caption file \(found: \['README.txt'\]\).*Accepted: a CSV",
        str(tmp_path / "captions.csv"): r"no file or folder .*captions.csv",
        "https://example.com/captions.csv": "is a URL; .* Download it and pass the local path",
        str(
            _csv(photos, folder.parent / "alt.csv")
        ): r"no column 'image', 'text'; its columns are \['image_path', 'alt'\]",
    }
    (tmp_path / "odd.json").write_text(json.dumps({"images": [{"id": 1}], "licenses": []}))
    cases[str(tmp_path / "odd.json")] = "neither COCO `annotations` nor Karpathy `sentences`"
    _write_jsonl(tmp_path / "escape.jsonl", [{"image": "../../etc/passwd.jpg", "text": "x"}])
    cases[str(tmp_path / "escape.jsonl")] = r"image path \.\./\.\./etc/passwd.jpg points outside the data folder"
    _write_jsonl(tmp_path / "url.jsonl", [{"image": "s3://bucket/a.jpg", "text": "x"}])
    cases[str(tmp_path / "url.jsonl")] = "image s3://bucket/a.jpg is a URL; images are not downloaded"
    for source, message in cases.items():
        with pytest.raises(DatasetError, match=message):
            load_caption_dataset(source)


def test_missing_photos_are_left_to_the_bad_example_check(photos, tmp_path):
    _write_jsonl(tmp_path / "gone.jsonl", [{"image": "gone.jpg", "text": "a plate"}])
    assert _paths(load_caption_dataset(str(tmp_path / "gone.jsonl"))["train"]) == [str(tmp_path / "gone.jpg")]


LAYOUTS = {  # name -> (write the data under a folder, extra flags)
    "csv": (
        lambda photos, root: _csv(photos, photos[0].parent / "captions.csv"),
        ["--image_column", "image_path", "--caption_column", "alt"],
    ),
    "parquet_bytes": (
        lambda photos, root: _parquet_with_bytes(photos, root / "photos.parquet"),
        ["--image_column", "jpeg", "--caption_column", "caption"],
    ),
    "coco": (lambda photos, root: _coco(photos, root), []),
    "karpathy": (lambda photos, root: _karpathy(photos, root), []),
    "chat": (lambda photos, root: _chat(photos, photos[0].parent / "chat.jsonl", "trl"), []),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_layout_trains_the_tiny_twin(layout, photos, tmp_path):
    write, flags = LAYOUTS[layout]
    source = write(photos, tmp_path)
    result = run(
        "lora",
        [
            "--config",
            "recipes/configs/tiny/lora.yaml",
            "--dataset_name",
            str(source),
            *flags,
            "--validation_split_percentage",
            "25",
            "--eval_strategy",
            "steps",
            "--eval_steps",
            "2",
            "--max_steps",
            "2",
            "--logging_steps",
            "1",
            "--per_device_train_batch_size",
            "4",
            "--caption_metrics",
            "false",
            "--fast_inputs",
            "false",
            "--dataloader_num_workers",
            "0",
            "--save_final_model",
            "false",
            "--memory_report_steps",
            "0",
            "--output_dir",
            str(tmp_path / "out"),
        ],
    )
    assert len(result.losses) == 2 and all(math.isfinite(loss) for loss in result.losses)
    report = {split["split"]: split for split in json.loads((tmp_path / "out" / "data_report.json").read_text())}
    assert report["train"]["kept"] == report["train"]["rows"] > 0 and report["validation"]["kept"] > 0


@pytest.mark.parametrize(
    "unrelated",
    [
        ("dataset_infos.json", {"default": {"description": "food photos", "features": {}}}),
        ("labels.json", ["pasta", "pizza", "rice"]),
    ],
)
def test_split_subfolders_win_over_an_unrelated_json_at_the_top(photos, tmp_path, unrelated):
    """A downloaded data set: train/ and validation/ with photos and metadata, and a JSON about the set at the top
    (it used to be read as the caption file, and failed naming its columns)."""
    folder, captions = photos
    root = _split_folders(photos, tmp_path / "download")
    name, content = unrelated
    (root / name).write_text(json.dumps(content))
    loaded = load_caption_dataset(str(root))
    assert {split: len(rows) for split, rows in loaded.items()} == {"train": 8, "validation": 4}
    assert loaded["validation"]["text"] == list(captions.values())[8:]
    assert _paths(loaded["train"]) == [str(root / "train" / name) for name in list(captions)[:8]]


def test_a_folder_that_reads_two_ways_names_both_and_the_flag_that_chooses(photos, tmp_path):
    folder, captions = photos
    root = _split_folders(photos, tmp_path / "both")
    _write_jsonl(root / "captions.jsonl", [{"image": str(folder / n), "text": t} for n, t in captions.items()])
    with pytest.raises(DatasetError) as raised:
        load_caption_dataset(str(root))
    message = str(raised.value)
    assert "can be read two ways" in message and "['captions.jsonl']" in message
    assert "train/metadata.jsonl" in message and "validation/metadata.jsonl" in message
    assert "--data_format json for the first, --data_format imagefolder for the second" in message
    assert list(load_caption_dataset(str(root), data_format="json")) == ["train"]
    assert len(load_caption_dataset(str(root), data_format="json")["train"]) == PHOTOS
    assert list(load_caption_dataset(str(root), data_format="imagefolder")) == ["train", "validation"]


@pytest.fixture(scope="module")
def layouts(photos, tmp_path_factory) -> dict[str, tuple[str, str, str, int]]:
    """Each --data_format's layout: its source, image and caption columns, and the rows it gives (all splits)."""
    folder, _ = photos
    root = tmp_path_factory.mktemp("layouts")
    shutil.copytree(folder, root / folder.name)  # the relative paths of the CSV and chat rows resolve here
    captions = photos[1]
    rows = [{"image": str(folder / name), "text": text} for name, text in captions.items()]
    both = PHOTOS * CAPTIONS_PER_PHOTO
    return {
        "csv": (str(_csv(photos, root / "captions.csv")), "image_path", "alt", PHOTOS),
        "json": (str(_write_jsonl(root / "captions.jsonl", rows)), "image", "text", PHOTOS),
        "parquet": (str(_parquet_with_bytes(photos, root / "photos.parquet")), "jpeg", "caption", PHOTOS),
        "coco": (str(_coco(photos, root / "coco")), "image", "text", both),
        "karpathy": (str(_karpathy(photos, root / "karpathy")), "image", "text", both),
        "chat": (str(_chat(photos, root / "chat.jsonl", "trl")), "image", "text", PHOTOS),
        "imagefolder": (str(_split_folders(photos, root / "imagefolder")), "image", "text", PHOTOS),
        "saved": (str(_saved(photos, root)), "image", "text", PHOTOS),
    }


@pytest.mark.parametrize("data_format", ["csv", "json", "parquet", "coco", "karpathy", "chat", "imagefolder", "saved"])
def test_each_declared_format_reads_its_layout(layouts, photos, data_format):
    source, image_column, caption_column, rows = layouts[data_format]
    loaded = load_caption_dataset(source, image_column, caption_column, data_format=data_format)
    assert sum(len(split) for split in loaded.values()) == rows
    texts = {text.removesuffix(" (0)").removesuffix(" (1)") for split in loaded.values() for text in split["text"]}
    assert texts == set(photos[1].values())


@pytest.mark.parametrize(
    "layout, declared, message",
    [
        ("coco", "karpathy", r"is not Karpathy split JSON .*; it reads as coco: pass --data_format coco \(or auto\)"),
        ("karpathy", "coco", "is not COCO captions JSON .*; it reads as karpathy: pass --data_format karpathy"),
        ("chat", "json", "has no column 'image' / 'text'; it reads as chat: pass --data_format chat"),
        ("json", "coco", r"is not COCO captions JSON .* \(a \.json file\); it reads as json: pass --data_format json"),
        ("csv", "parquet", r"is not Parquet caption files \(a \.parquet file\); it reads as csv"),
        ("json", "chat", r"has no `messages` or `conversations` column \(its columns: \['image', 'text'\]\)"),
        ("imagefolder", "saved", "is not a datasets save_to_disk folder: it has no dataset_dict.json"),
        ("saved", "imagefolder", "is not an imagefolder .*: it holds no photos"),
        ("imagefolder", "csv", r"holds no \.csv/\.tsv file at its top"),
        ("csv", "imagefolder", "is a file; imagefolder reads a folder"),
        ("json", "webdataset", "WebDataset .tar shards, which are read as a stream: add --streaming"),
    ],
)
def test_a_wrong_declared_format_is_a_clear_error(layouts, layout, declared, message):
    source, image_column, caption_column, _ = layouts[layout]
    with pytest.raises(DatasetError, match=message) as raised:
        load_caption_dataset(source, image_column, caption_column, data_format=declared)
    assert declared == "webdataset" or str(raised.value).startswith(f"--data_format {declared}: ")


def test_data_format_values_are_checked_on_the_command_line_and_in_the_config(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_recipe_args("lora", ["--data_format", "xml", "--output_dir", str(tmp_path)])
    assert "invalid choice: 'xml' (choose from 'auto', 'csv', 'json'" in capsys.readouterr().err
    config = tmp_path / "preset.yaml"
    config.write_text("data_format: xml\n")
    with pytest.raises(RecipeError, match=r"--data_format xml: give one of \['auto', 'csv', 'json'"):
        parse_recipe_args("lora", ["--config", str(config), "--output_dir", str(tmp_path)])


@pytest.mark.parametrize("separator", [";", "\t", "|"])
def test_csv_separated_by_semicolons_tabs_or_bars_is_read(photos, tmp_path, separator):
    """Spreadsheets in many locales write `;`; captions with commas then made pandas read the first field as an
    index (`__index_level_0__`) and the rest as one column."""
    folder, captions = photos
    lines = [f"image{separator}text"] + [f'{folder / n}{separator}"{t}, seen from above"' for n, t in captions.items()]
    (tmp_path / "captions.csv").write_text("\n".join(lines) + "\n")
    train = load_caption_dataset(str(tmp_path / "captions.csv"))["train"]
    assert train["text"] == [f"{text}, seen from above" for text in captions.values()]
    assert _paths(train) == [str(folder / name) for name in captions]


def test_a_csv_in_a_legacy_encoding_says_to_save_it_as_utf8(photos, tmp_path):
    folder, _ = photos
    path = tmp_path / "captions.csv"
    path.write_bytes(f"image,text\n{folder / 'a.jpg'},a crème brûlée\n".encode("cp1252"))
    with pytest.raises(DatasetError, match=r"is not UTF-8 text \(line 2 has the byte 0xe8.*save it as UTF-8"):
        load_caption_dataset(str(path))


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("captions.csv", "", r"is an empty file \(0 bytes\)"),
        ("captions.csv", "image,text\n", "is empty: it has no rows"),
        ("captions.json", "[]", "is empty: it has no rows"),
        ("captions.json", "null\n", "holds no rows: JSON rows are a list or objects"),  # pyarrow 26 crashed on it
    ],
)
def test_an_empty_caption_file_is_named_empty(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DatasetError, match=message):
        load_caption_dataset(str(path))


def test_the_index_pandas_writes_is_not_read_as_a_column(photos, tmp_path):
    folder, captions = photos
    frame = pd.DataFrame({"file": [str(folder / n) for n in captions], "alt": list(captions.values())})
    frame = frame.sample(frac=1, random_state=0)  # a shuffled frame: pandas stores its index as `__index_level_0__`
    frame.to_parquet(tmp_path / "frame.parquet")
    with pytest.raises(DatasetError, match=r"its columns are \['file', 'alt'\]\. Pass --image_column"):
        load_caption_dataset(str(tmp_path / "frame.parquet"))
    assert (
        load_caption_dataset(str(tmp_path / "frame.parquet"), "file", "alt")["train"]["text"] == frame["alt"].tolist()
    )
