"""The fast path changes speed, not numbers: batches, conversions and the loss curve match the plain path."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from alt_text_recipes.collator import AltTextCollator
from alt_text_recipes.data import load_caption_dataset
from alt_text_recipes.inputs import prepare_for_training
from alt_text_recipes.modeling import load_processor
from alt_text_recipes.registry import recipe_defaults
from alt_text_recipes.train import run
from alt_text_recipes.validation import check_split

from bad_inputs import USABLE, write_corpus
from conftest import REPO_ROOT, TINY_MODELS

BF16_RELATIVE_STEP = 2**-7  # the spacing of bf16 numbers near 1, relative


def _batches(split, processor, is_encoder_decoder):
    collator = AltTextCollator(processor, is_encoder_decoder)
    rows = range(len(split))
    plain = collator([split[i] for i in rows])
    in_workers = collator([prepare_for_training(split, processor)[i] for i in rows])
    cached = collator([prepare_for_training(split, processor, cache=True)[i] for i in rows])
    return plain, in_workers, cached


@pytest.mark.parametrize("family", sorted(TINY_MODELS))
def test_prepared_images_give_the_processors_batch_exactly(family, tmp_path):
    """Every usable kind of upload (CMYK, alpha, palette, 16-bit, EXIF-rotated, ...) at most the model's input
    size, where JPEG draft decoding has nothing to skip: the fast path's batch is the processor's, bit for bit."""
    split, _ = check_split(load_caption_dataset(str(write_corpus(tmp_path / "corpus")))["train"], "train")
    assert len(split) == len(USABLE)
    processor = load_processor(str(TINY_MODELS[family]))
    plain, in_workers, cached = _batches(split, processor, family == "t5")
    for fast in (in_workers, cached):
        assert fast.keys() == plain.keys()
        for key in plain:
            assert torch.equal(fast[key], plain[key]), key


def test_draft_decoding_of_larger_photos_stays_close(food_splits):
    """The embedded photos (128² JPEGs) are decoded at half size in the DCT domain instead of full size and
    resized: token ids and labels are identical, pixels differ by about two grey levels (of 255) on average."""
    split = food_splits["train"].select(range(16))
    processor = load_processor(str(TINY_MODELS["opt"]))
    plain, in_workers, cached = _batches(split, processor, False)
    for fast in (in_workers, cached):
        for key in ("input_ids", "attention_mask", "labels"):
            assert torch.equal(fast[key], plain[key])
        difference = (fast["pixel_values"] - plain["pixel_values"]).abs()
        grey_level = 1 / 255 / min(processor.image_processor.image_std)  # one grey level, normalised
        assert 0 < difference.mean() < 3 * grey_level


def test_fast_and_plain_loss_curves_match_within_bf16(tmp_path):
    """The first 20 steps of bf16 full fine-tuning: plain path and fast path (workers, cache) log the same
    losses to within the spacing of bf16 numbers."""
    curves = {}
    for fast in ("false", "true"):
        result = run(
            recipe_defaults("full_ft"),
            [
                "--config",
                "recipes/configs/tiny/full_ft.yaml",
                "--dtype",
                "bfloat16",
                "--bf16",
                "true",
                "--max_steps",
                "20",
                "--logging_steps",
                "1",
                "--memory_report_steps",
                "0",
                "--fast_inputs",
                fast,
                "--output_dir",
                str(tmp_path / fast),
            ],
        )
        curves[fast] = np.array(result.losses)
    assert len(curves["true"]) == 20
    relative = np.abs(curves["true"] - curves["false"]) / np.abs(curves["false"])
    assert relative.max() < BF16_RELATIVE_STEP, relative
    assert curves["true"][-1] < 0.6 * curves["true"][0]  # and it learns


def test_throughput_benchmark_reports_ratios(tmp_path):
    """A short run of the benchmark on random weights built from a config, as on a GPU: table and JSON."""
    out = tmp_path / "throughput.json"
    finished = subprocess.run(
        [
            sys.executable,
            "benchmarks/throughput.py",
            "--model_config",
            str(TINY_MODELS["opt"]),
            "--images",
            "48",
            "--steps",
            "3",
            "--warmup_steps",
            "2",
            "--batch_size",
            "8",
            "--out",
            str(out),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    assert "input_pipeline_speedup = " in finished.stdout and "train_speedup = " in finished.stdout
    result = json.loads(out.read_text())
    assert result["input_pipeline_speedup"] > 0 and result["train_speedup"] > 0
    assert {row["image_size"] for row in result["input_pipeline"]} == {64, 224}
    assert result["training"]["ours"]["attention"] == "sdpa" and result["training"]["plain"]["attention"] == "eager"
    flops = result["model_flops_per_sample"]
    parts = [flops[part] for part in ("vision_model", "qformer", "language_model")]
    assert all(value > 0 for value in parts) and sum(parts) <= flops["total"]
    assert out.with_suffix(".md").read_text().count("|") > 20
