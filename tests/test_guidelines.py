"""The accessibility-guideline metrics (length limit, redundant opening, social markup, mean length), the
`--alt_text_max_chars` flag, and alt_text.py holding its output to them (summary.json counts what it changed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alt_text_recipes.data.errors import RecipeError
from alt_text_recipes.outputs.alt_text_files import enforce_guidelines
from alt_text_recipes.outputs.guidelines import drop_redundant_opening, guideline_scores
from alt_text_recipes.train.arguments import parse_recipe_args
from alt_text_recipes.train.settings_parser import parse_tool_args

from conftest import DATASET, TINY_MODELS

CLEAN = "a red bowl of tomato soup on a wooden table"  # 43 characters, no markup, no opening


def test_within_limit_counts_captions_at_most_the_limit_after_whitespace_is_made_single():
    at_limit, over = "x" * 125, "x" * 126
    assert guideline_scores([at_limit, over])["guideline_within_limit"] == 0.5
    assert guideline_scores(["  a   bowl  " + "x" * 115])["guideline_within_limit"] == 1  # 122 once normalized
    assert guideline_scores([CLEAN, CLEAN + " beside a glass"], max_chars=43)["guideline_within_limit"] == 0.5
    assert guideline_scores([CLEAN], max_chars=42)["guideline_within_limit"] == 0


@pytest.mark.parametrize(
    "caption, redundant",
    [
        ("image of a bowl of soup", True),
        ("An image of a bowl of soup", True),
        ("A picture showing a bowl of soup", True),
        ("the photo shows a bowl of soup", True),
        ("Photograph depicting a bowl of soup", True),
        ("This is a photo of a bowl of soup", True),
        ("Picture: a bowl of soup", True),
        ("  pic of a bowl of soup", True),
        ("an illustration of a bowl of soup", True),
        ("a bowl of soup", False),
        ("a photo-realistic painting of soup", False),  # "photo" inside a description is not an opening
        ("photos from the kitchen on a table", False),
        ("a bowl of soup beside a picture of a cat", False),  # only the opening counts
    ],
)
def test_redundant_openings(caption, redundant):
    assert guideline_scores([caption])["guideline_redundant_opening"] == float(redundant)


@pytest.mark.parametrize(
    "caption, markup",
    [
        ("a bowl of soup #dinner", True),
        ("a bowl of soup https://example.com/soup.jpg", True),
        ("a bowl of soup www.example.com", True),
        ("a bowl of soup by @chef_anna", True),
        ("a bowl of soup 🍲", True),
        ("a bowl of soup ❤️", True),
        ("a bowl of soup, dish #1 on the menu", False),  # a number is not a hashtag
        ("a bowl of soup, write to anna@example.com", False),  # an e-mail address is not a handle
        ("it&#39;s a bowl of soup", False),  # an HTML entity is not a hashtag
        (CLEAN, False),
    ],
)
def test_social_markup(caption, markup):
    assert guideline_scores([caption])["guideline_social_markup"] == float(markup)


def test_mean_length_and_shares_over_a_mixed_set():
    captions = [CLEAN, "image of a cat #cute", "a dog " + "x" * 200, "  a   plate  "]
    scores = guideline_scores(captions, max_chars=125)
    assert scores == {
        "guideline_within_limit": 0.75,
        "guideline_redundant_opening": 0.25,
        "guideline_social_markup": 0.25,
        "guideline_mean_chars": (43 + 20 + 206 + 7) / 4,
    }
    with pytest.raises(ValueError, match="no captions"):
        guideline_scores([])


def test_the_max_chars_flag_reaches_the_scoring_settings():
    script_args, _, _ = parse_recipe_args("lora", ["--config", "recipes/configs/tiny/lora.yaml"])
    assert script_args.alt_text_max_chars == 125
    script_args, _, _ = parse_recipe_args(
        "lora", ["--config", "recipes/configs/tiny/lora.yaml", "--alt_text_max_chars", "60"]
    )
    assert script_args.alt_text_max_chars == 60
    from evaluate_captions import EvaluationArguments

    assert parse_tool_args(EvaluationArguments, ["--alt_text_max_chars", "30"]).alt_text_max_chars == 30
    with pytest.raises(RecipeError, match="--alt_text_max_chars 0: give at least 1 character"):
        parse_tool_args(EvaluationArguments, ["--alt_text_max_chars", "0"])


@pytest.mark.parametrize("metric", ["guideline_redundant_opening", "eval_guideline_social_markup"])
def test_a_guideline_share_as_best_metric_keeps_the_lowest(metric):
    _, training_args, _ = parse_recipe_args("lora", ["--metric_for_best_model", metric])
    assert training_args.greater_is_better is False
    _, training_args, _ = parse_recipe_args("lora", ["--metric_for_best_model", "guideline_within_limit"])
    assert training_args.greater_is_better is not False


def test_evaluate_captions_scores_the_guidelines_with_the_flags_limit(monkeypatch, tmp_path):
    """Two images, one caption of 14 characters and one of 46: all within 125, one within 20."""
    from evaluate_captions import EvaluationArguments, evaluate

    import alt_text_recipes.outputs.generation

    captions = ["a bowl of soup", "picture of a bowl of soup #dinner on a table 🍲"]
    monkeypatch.setattr(
        alt_text_recipes.outputs.generation, "generate_alt_text", lambda model, processor, images, **_: captions
    )
    flags = ["--models", str(TINY_MODELS["opt"]), "--max_samples", "2", "--embedding_model", "none", "--examples", "0"]
    flags += ["--output_file", str(tmp_path / "scores.json")]
    default = evaluate(parse_tool_args(EvaluationArguments, flags))["models"]["tiny-blip2-opt"]["scores"]
    short = evaluate(parse_tool_args(EvaluationArguments, [*flags, "--alt_text_max_chars", "20"]))
    scores = short["models"]["tiny-blip2-opt"]["scores"]
    assert default["guideline_within_limit"] == 1 and scores["guideline_within_limit"] == 0.5
    assert scores["guideline_redundant_opening"] == scores["guideline_social_markup"] == 0.5
    assert scores["guideline_mean_chars"] == default["guideline_mean_chars"] == (14 + 46) / 2
    assert scores["cider"] == default["cider"] and short["alt_text_max_chars"] == 20
    assert json.loads((tmp_path / "scores.json").read_text())["alt_text_max_chars"] == 20


def test_enforcing_drops_the_opening_then_cuts_between_words():
    long = "An image of a blue bowl of tomato soup topped with three basil leaves on a red checkered cloth"
    written = enforce_guidelines(long, 40, drop_opening=True)
    assert written.opening_dropped and written.cut and written.text == "A blue bowl of tomato soup"
    kept = enforce_guidelines(long, 200, drop_opening=False)
    assert kept.text == long and not kept.cut and not kept.opening_dropped
    assert drop_redundant_opening("an image of ") == "an image of "  # nothing would be left: kept


# What the monkeypatched model "generates" for the four photos, in order.
GENERATED = [
    "An image of a blue bowl of tomato soup topped with three basil leaves on a red checkered cloth beside a glass",
    "picture of a plate of pasta",
    "a tray of pizza with olives",
    "a black plate of pancakes topped with four blueberries and two mint leaves on a dark slate table near a window",
]


def write_alt_text_for(tmp_path: Path, monkeypatch, *flags: str) -> Path:
    import alt_text
    from alt_text import AltTextArguments, write_alt_text

    photos = tmp_path / "photos"
    photos.mkdir(exist_ok=True)
    for index in range(4):
        (photos / f"{index}.jpg").write_bytes((DATASET / "test" / f"test_000{index}.jpg").read_bytes())
    monkeypatch.setattr(alt_text, "generate_alt_text", lambda model, processor, images, **_: GENERATED[: len(images)])
    output = tmp_path / "alt"
    model_flags = ["--model_name_or_path", str(TINY_MODELS["opt"]), "--images", str(photos), "--batch_size", "4"]
    write_alt_text(parse_tool_args(AltTextArguments, [*model_flags, "--output_dir", str(output), *flags]))
    return output


def test_alt_text_cuts_and_drops_openings_and_counts_both_in_its_summary(tmp_path, monkeypatch, capsys):
    output = write_alt_text_for(tmp_path, monkeypatch, "--alt_text_max_chars", "60", "--overwrite", "true")
    records = [json.loads(line) for line in (output / "alt_text.jsonl").read_text().splitlines()]
    written = [record["alt_text"] for record in records]
    assert written[1:3] == ["A plate of pasta", "A tray of pizza with olives"]
    for text, generated in zip(written, GENERATED, strict=True):
        assert len(text) <= 60
        source = drop_redundant_opening(generated)
        assert source.lower().startswith(text.lower())  # the start of what was generated, opening dropped
        assert len(text) == len(source) or source[len(text)] == " "  # cut where a word ends
    summary = json.loads((output / "summary.json").read_text())
    assert summary["cut"] == 2 and summary["redundant_opening_dropped"] == 2
    assert (summary["images"], summary["written"], summary["skipped"], summary["alt_text_max_chars"]) == (4, 4, 0, 60)
    assert summary["guidelines"]["generated"]["guideline_within_limit"] == 0.5
    assert summary["guidelines"]["generated"]["guideline_redundant_opening"] == 0.5
    assert summary["guidelines"]["written"]["guideline_within_limit"] == 1
    assert summary["guidelines"]["written"]["guideline_redundant_opening"] == 0
    assert "2 cut to 60 characters, 2 redundant opening(s) dropped" in capsys.readouterr().out


def test_alt_text_keeps_openings_when_asked_and_the_old_flag_still_sets_the_limit(tmp_path, monkeypatch):
    output = write_alt_text_for(tmp_path, monkeypatch, "--max_chars", "125", "--drop_redundant_opening", "false")
    records = [json.loads(line) for line in (output / "alt_text.jsonl").read_text().splitlines()]
    assert [record["alt_text"] for record in records][:2] == [GENERATED[0], "Picture of a plate of pasta"]
    assert all(record["max_chars"] == 125 and record["drop_redundant_opening"] is False for record in records)
    summary = json.loads((output / "summary.json").read_text())
    assert summary["cut"] == 0 and summary["redundant_opening_dropped"] == 0
    assert summary["guidelines"]["written"]["guideline_redundant_opening"] == 0.5
