"""Caption cleaning: user-contributed captions lose their URLs, @handles, emoji, hashtag blocks, "yum!!!" and line
breaks before training and scoring, and a caption left too short skips its row; every change is counted per
rule, with examples, in the log and data_report.json; `--clean_captions false` trains on captions verbatim."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from datasets import Image
from torch.utils.data import DataLoader

from alt_text_recipes.data.caption_cleaning import (
    EXAMPLES_PER_RULE,
    RULE_NAMES,
    TOO_SHORT,
    CleanedCaption,
    clean_caption,
)
from alt_text_recipes.data.checks import apply_policy, check_split, write_report
from alt_text_recipes.data.errors import DatasetError
from alt_text_recipes.data.sources import load_caption_dataset
from alt_text_recipes.data.streaming import StreamCheck, checked_stream, load_caption_stream
from alt_text_recipes.train.arguments import parse_recipe_args
from alt_text_recipes.train.loop import loaded_splits, run
from alt_text_recipes.train.modeling import load_processor

from conftest import DATASET, TINY_MODELS

# A photo site's captions over 12 embedded photos (photo 0 twice): (photo, caption, cleaned or None if the row
# is dropped, the rules that change it).
MESSY = [
    (0, "A margherita pizza on a wooden board https://insta.example/p/123",
     "A margherita pizza on a wooden board", {"url"}),
    (1, "Fresh pasta with basil, photo by @chef_maria", "Fresh pasta with basil", {"handle"}),
    (2, "A bowl of ramen with a soft egg 🍜😋", "A bowl of ramen with a soft egg", {"emoji"}),
    (3, "Sunday brunch: pancakes with blueberries and syrup\n\n#brunch #pancakes #foodie",
     "Sunday brunch: pancakes with blueberries and syrup", {"hashtag_block", "whitespace"}),
    (4, "A plate of #sushi rolls with pickled ginger", "A plate of sushi rolls with pickled ginger",
     {"hashtag_inline"}),
    (5, "Tomato soup with mint leaves, yum!!!", "Tomato soup with mint leaves, yum!", {"repeated_punctuation"}),
    (6, "A green salad with strawberries\n\ton a  marble counter ",
     "A green salad with strawberries on a marble counter", {"whitespace"}),
    (7, "yum!!! 😍 #foodporn", None, {"repeated_punctuation", "emoji", "hashtag_block", TOO_SHORT}),
    (8, "@bestpizza #pizza https://pizza.example", None, {"url", "handle", "hashtag_block", TOO_SHORT}),
    (9, "so good 🍕", None, {"emoji", TOO_SHORT}),
    (10, "a white plate of rice topped with three strawberries on a dark slate",
     "a white plate of rice topped with three strawberries on a dark slate", set()),
    (11, "a blue tray of pasta topped with one olive on a wooden table",
     "a blue tray of pasta topped with one olive on a wooden table", set()),
    (0, "Best pizza in town!!! via @luigi 🍕🍕 #pizza #italian", "Best pizza in town!",
     {"handle", "emoji", "hashtag_block", "repeated_punctuation"}),
]  # fmt: skip
# Rows each rule changes on the messy set, counted by hand from the table above.
MESSY_COUNTS = {
    "url": 2,
    "handle": 3,
    "hashtag_block": 4,
    "hashtag_inline": 1,
    "emoji": 4,
    "repeated_punctuation": 3,
    "whitespace": 2,
    "too_short_after_cleaning": 3,
}
CLEANED = [cleaned for _, _, cleaned, _ in MESSY if cleaned is not None]
VERBATIM = [caption for _, caption, _, _ in MESSY]


@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> Path:
    """The messy set as an imagefolder data set (train split only); returns its root."""
    root = tmp_path_factory.mktemp("messy")
    folder = root / "train"
    folder.mkdir()
    photos = [json.loads(line)["file_name"] for line in (DATASET / "train/metadata.jsonl").read_text().splitlines()]
    rows = []
    for photo, caption, _, _ in MESSY:
        shutil.copy(DATASET / "train" / photos[photo], folder / photos[photo])
        rows.append({"file_name": photos[photo], "text": caption})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return root


@pytest.mark.parametrize(
    "rule, caption, cleaned",
    [
        ("url", "A bowl of pho, recipe at https://pho.example/a?b=1", "A bowl of pho, recipe"),
        ("url", "Lunch at the corner cafe - www.cafe.example", "Lunch at the corner cafe"),
        ("handle", "A cheese board with grapes by @cheeselover", "A cheese board with grapes"),
        ("handle", "@maria baked a loaf of sourdough bread", "baked a loaf of sourdough bread"),
        ("emoji", "A stack of pancakes with syrup 🥞❤️", "A stack of pancakes with syrup"),
        ("hashtag_block", "A tray of fresh croissants. #bakery #breakfast", "A tray of fresh croissants."),
        ("hashtag_block", "A tray of fresh croissants! #bakery", "A tray of fresh croissants!"),
        ("hashtag_inline", "A slice of #pizza with basil", "A slice of pizza with basil"),
        ("hashtag_inline", "A bowl of #pasta_carbonara with cheese", "A bowl of pasta carbonara with cheese"),
        ("hashtag_inline", "Dinner with friends, I love #pizza", "Dinner with friends, I love pizza"),
        ("repeated_punctuation", "A huge burger, yum!!!", "A huge burger, yum!"),
        ("repeated_punctuation", "Who ordered the fries?!?", "Who ordered the fries?"),
        ("repeated_punctuation", "Wait for it.... a stack of waffles", "Wait for it... a stack of waffles"),
        ("repeated_punctuation", "A plate of dumplings.. and soy sauce", "A plate of dumplings. and soy sauce"),
        ("whitespace", "A plate of tacos\nwith lime", "A plate of tacos with lime"),
        ("whitespace", "  A plate\tof   tacos  ", "A plate of tacos"),
        ("too_short_after_cleaning", "Tasty food.", "Tasty food."),
    ],
)
def test_each_rule_on_its_own(rule, caption, cleaned):
    assert clean_caption(caption) == CleanedCaption(cleaned, (rule,))


@pytest.mark.parametrize(
    "caption",
    [
        "A plate of spaghetti, then dessert...",  # an ellipsis is punctuation, not a repeat
        "The #1 burger in town with fries",  # `#1` is no hashtag
        "Email me at cook@example.com for the recipe",  # an address is no handle
        "crème brûlée au café on a plate, 北京烤鸭 beside it",
    ],
)
def test_what_is_no_noise_is_kept(caption):
    assert clean_caption(caption) == CleanedCaption(caption, ())


def test_the_embedded_captions_are_clean_already():
    """The embedded set was written as alt text: cleaning changes none of its 1000 captions."""
    captions = [
        json.loads(line)["text"] for split in ("train", "validation", "test")
        for line in (DATASET / split / "metadata.jsonl").read_text().splitlines()
    ]  # fmt: skip
    assert len(captions) == 1000
    assert [caption for caption in captions if clean_caption(caption).rules] == []


def test_each_messy_caption_is_cleaned_by_the_rules_expected():
    for _, caption, cleaned, rules in MESSY:
        result = clean_caption(caption)
        assert set(result.rules) == rules, caption
        assert result.kept == (cleaned is not None) and (cleaned is None or result.text == cleaned), caption


def test_the_data_check_cleans_the_messy_set_and_counts_each_rule(messy):
    kept, report = check_split(load_caption_dataset(str(messy))["train"], "train")
    cleaning = report.caption_cleaning
    print(f"messy set ({len(MESSY)} rows): {cleaning.rules}, {cleaning.changed} changed, {cleaning.dropped} dropped")
    assert cleaning.rules == MESSY_COUNTS
    assert Counter(rule for _, _, _, rules in MESSY for rule in rules) == MESSY_COUNTS  # the table agrees
    assert (cleaning.rows, cleaning.changed, cleaning.dropped) == (13, 11, 3)
    assert list(kept["text"]) == CLEANED and report.kept == 10
    assert report.reasons() == {"caption too short after cleaning": 3}
    assert report.problems[0].reason == (
        "caption too short after cleaning (fewer than 3 words: 'yum!!! 😍 #foodporn' -> 'yum!')"
    )
    photos = [Path(stored["path"]).name for stored in kept.cast_column("image", Image(decode=False))["image"]]
    assert photos == [f"train_{photo:04d}.jpg" for photo, _, cleaned, _ in MESSY if cleaned]  # still paired


def test_the_report_is_written_with_counts_and_examples_and_reloads(messy, tmp_path):
    _, report = check_split(load_caption_dataset(str(messy))["train"], "train")
    reloaded = json.loads(write_report([report], tmp_path).read_text(encoding="utf-8"))[0]["caption_cleaning"]
    assert reloaded["enabled"] is True and reloaded["rules"] == MESSY_COUNTS
    assert (reloaded["rows"], reloaded["changed"], reloaded["dropped"]) == (13, 11, 3)
    assert set(reloaded["examples"]) == set(MESSY_COUNTS)
    shown = {rule: len(examples) for rule, examples in reloaded["examples"].items()}
    assert shown == {rule: min(EXAMPLES_PER_RULE, count) for rule, count in MESSY_COUNTS.items()}
    assert reloaded["examples"]["url"][0] == {
        "before": "A margherita pizza on a wooden board https://insta.example/p/123",
        "after": "A margherita pizza on a wooden board",
    }
    assert reloaded["examples"]["too_short_after_cleaning"][1] == {
        "before": "@bestpizza #pizza https://pizza.example",
        "after": "",
    }


def test_a_caption_left_too_short_stops_the_run_under_the_error_policy(messy):
    _, report = check_split(load_caption_dataset(str(messy))["train"], "train")
    with pytest.raises(DatasetError, match=r"^3 bad example\(s\) .*caption too short after cleaning"):
        apply_policy([report], "error")


def test_reference_lists_keep_their_references_long_enough(messy):
    """Evaluation references (a list per image) are cleaned as training captions are: each one cleaned, the
    too-short ones left out, the row skipped only when none is left."""
    split = load_caption_dataset(str(messy))["train"].select(range(2))
    split = split.remove_columns("text").add_column("text", [["#yum", VERBATIM[0]], ["so good 🍕"]])
    kept, report = check_split(split, "test", caption_lists=True)
    assert list(kept["text"]) == [[CLEANED[0]]]
    assert report.caption_cleaning.dropped == 1 and report.caption_cleaning.rules["too_short_after_cleaning"] == 2


def _loaded_train_split(messy: Path, output_dir: Path, *flags: str):
    """The training split the recipes train on, through their loading path (parse, load, check, report)."""
    script_args, training_args, _ = parse_recipe_args(
        "full_ft",
        ["--config", "recipes/configs/tiny/full_ft.yaml", "--dataset_name", str(messy), "--output_dir",
         str(output_dir), "--fast_inputs", "false", *flags],
    )  # fmt: skip
    processor = load_processor(str(TINY_MODELS["opt"]))
    return loaded_splits(script_args, training_args, processor)[0]


def test_the_recipes_loading_path_trains_on_cleaned_captions(messy, tmp_path, capsys):
    assert list(_loaded_train_split(messy, tmp_path)["text"]) == CLEANED
    assert "caption cleaning: 'train' 13 rows, 11 changed, 3 dropped" in capsys.readouterr().out


def test_clean_captions_false_trains_on_the_captions_verbatim(messy, tmp_path, capsys):
    assert list(_loaded_train_split(messy, tmp_path, "--clean_captions", "false")["text"]) == VERBATIM
    out = capsys.readouterr().out
    assert "data check: 'train' 13 rows, 13 used, 0 skipped" in out
    assert "caption cleaning: off for 'train' (--clean_captions false): captions used verbatim" in out
    (train,) = json.loads((tmp_path / "data_report.json").read_text(encoding="utf-8"))
    assert train["caption_cleaning"] == {**train["caption_cleaning"], "enabled": False, "rows": 0, "examples": {}}


def test_a_training_run_logs_and_reports_the_cleaning(messy, tmp_path, capsys):
    output_dir = tmp_path / "run"
    run(
        "full_ft",
        ["--config", "recipes/configs/tiny/full_ft.yaml", "--dataset_name", str(messy), "--output_dir",
         str(output_dir), "--max_steps", "1", "--per_device_train_batch_size", "2", "--memory_report_steps", "0",
         "--save_final_model", "false", "--dataloader_num_workers", "0"],
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "data check: 'train' 13 rows, 10 used, 3 skipped (3 caption too short after cleaning)" in out
    assert (
        "rows changed per rule: url 2, handle 3, hashtag_block 4, hashtag_inline 1, emoji 4, "
        "repeated_punctuation 3, whitespace 2, too_short_after_cleaning 3" in out
    )
    assert "  url: 'A margherita pizza on a wooden board https://insta.example/p/123' -> " in out
    (train,) = json.loads((output_dir / "data_report.json").read_text(encoding="utf-8"))
    assert train["caption_cleaning"]["rules"] == MESSY_COUNTS and train["kept"] == 10


@pytest.mark.parametrize("clean", [True, False])
def test_a_stream_is_cleaned_as_it_is_read(messy, clean):
    check = StreamCheck("train", "skip", clean_captions=clean)
    stream = checked_stream(load_caption_stream(str(messy))["train"], check)
    read = list(DataLoader(stream, batch_size=4, num_workers=1, collate_fn=list))  # cleaned in a worker process
    report = check.report()
    check.close()
    captions = sorted(example["text"] for batch in read for example in batch)
    assert captions == sorted(CLEANED if clean else VERBATIM)
    cleaning = report.caption_cleaning
    assert cleaning.enabled is clean and report.rows == 13 and report.kept == len(captions)
    if clean:
        assert cleaning.rules == MESSY_COUNTS and (cleaning.rows, cleaning.changed, cleaning.dropped) == (13, 11, 3)
        assert all(1 <= len(cleaning.examples[rule]) <= EXAMPLES_PER_RULE for rule in MESSY_COUNTS)
    else:
        assert cleaning.rules == dict.fromkeys(RULE_NAMES, 0) and report.problems == []


def test_evaluate_captions_scores_against_cleaned_references(messy):
    from evaluate_captions import EvaluationArguments, evaluate

    args = EvaluationArguments(
        models=[f"opt={TINY_MODELS['opt']}"],
        dataset_name=str(messy),
        split="train",
        max_samples=4,
        generation_max_new_tokens=2,
        embedding_model="none",
        examples=0,
    )
    report = evaluate(args)
    assert report["references"] == [[cleaned] for cleaned in CLEANED[:4]]
    assert report["data_check"]["caption_cleaning"]["rules"]["url"] == 1
