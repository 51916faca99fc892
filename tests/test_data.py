"""The embedded food set and the loaders for the three kinds of source."""

from __future__ import annotations

import json
import re

import pytest
from datasets import Dataset, DatasetDict, Image

from alt_text_recipes.data.sources import DatasetError, load_caption_dataset, select_split

from conftest import DATASET
from make_gourmetgram_mini import DISHES, HELD_OUT_PAIRS, SINGULAR

CAPTION = re.compile(r"of (?P<dish>.+?)(?: topped with \w+ (?P<topping>.+?))? on a ")
PLURAL = {singular: plural for plural, singular in SINGULAR.items()}


def _pairs(captions):
    """(dish, topping) pairs named by the captions that have toppings."""
    matches = (CAPTION.search(caption) for caption in captions)
    return {(m["dish"], PLURAL.get(m["topping"], m["topping"])) for m in matches if m["topping"]}


def test_embedded_imagefolder_splits_and_held_out_combinations(food_splits):
    assert {name: len(split) for name, split in food_splits.items()} == {"train": 800, "validation": 100, "test": 100}
    assert isinstance(food_splits["train"].features["image"], Image)
    train_pairs = _pairs(food_splits["train"]["text"]) | _pairs(food_splits["validation"]["text"])
    test_pairs = _pairs(food_splits["test"]["text"])
    # Every test photo shows a (dish, topping) combination never seen in training or validation...
    assert test_pairs and test_pairs <= HELD_OUT_PAIRS
    assert not test_pairs & train_pairs
    # ...while every dish and topping on its own is seen in training.
    train_text = " ".join(food_splits["train"]["text"])
    assert all(dish in train_text for dish in DISHES)
    # Captions vary in every attribute: few repeat.
    captions = food_splits["train"]["text"]
    assert len(set(captions)) > 0.85 * len(captions)


def test_embedded_metadata_is_the_imagefolder_layout():
    rows = [json.loads(line) for line in (DATASET / "train" / "metadata.jsonl").read_text().splitlines()]
    assert set(rows[0]) == {"file_name", "text"}
    assert all((DATASET / "train" / row["file_name"]).exists() for row in rows)


def test_save_to_disk_folder_with_other_column_names(tmp_path, food_splits):
    snapshot = DatasetDict(
        {
            "train": food_splits["train"].select(range(8)).rename_columns({"image": "photo", "text": "alt"}),
            "test": food_splits["test"].select(range(4)).rename_columns({"image": "photo", "text": "alt"}),
        }
    )
    snapshot.save_to_disk(tmp_path / "snapshot")
    loaded = load_caption_dataset(str(tmp_path / "snapshot"), image_column="photo", caption_column="alt")
    assert loaded["train"].column_names == ["image", "text"]
    assert loaded["train"][3]["text"] == food_splits["train"][3]["text"]
    assert loaded["test"][0]["image"].size == food_splits["test"][0]["image"].size


def test_single_dataset_saved_to_disk_becomes_train(tmp_path, food_splits):
    food_splits["train"].select(range(5)).save_to_disk(tmp_path / "one")
    loaded = load_caption_dataset(str(tmp_path / "one"))
    assert list(loaded) == ["train"] and len(loaded["train"]) == 5


def test_image_paths_are_decoded(tmp_path):
    image_path = str(DATASET / "train" / "train_0000.jpg")
    Dataset.from_dict({"image": [image_path], "text": ["x"]}).save_to_disk(tmp_path / "paths")
    loaded = load_caption_dataset(str(tmp_path / "paths"))
    assert loaded["train"][0]["image"].size == (128, 128)


def test_wrong_column_is_a_clear_error_listing_the_columns():
    with pytest.raises(DatasetError, match=r"no column 'caption'.*\['image', 'text'\].*--caption_column"):
        load_caption_dataset(str(DATASET), caption_column="caption")


def test_missing_or_empty_split_is_a_clear_error(food_splits):
    with pytest.raises(DatasetError, match="no split 'dev'.*'train', 'validation', 'test'"):
        select_split(food_splits, "dev")
    empty = DatasetDict({"train": food_splits["train"].select([])})
    with pytest.raises(DatasetError, match="split 'train' is empty"):
        select_split(empty, "train")
    assert len(select_split(food_splits, "train", max_samples=7)) == 7
