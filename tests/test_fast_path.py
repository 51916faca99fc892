"""The fast path changes speed, not numbers: batches, conversions and the loss curve match the plain path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoProcessor
from transformers.utils import is_torchvision_available

from alt_text_recipes.data.checks import check_split
from alt_text_recipes.data.input_pipeline import prepare_for_training
from alt_text_recipes.data.sources import load_caption_dataset
from alt_text_recipes.train.collators import Blip2Collator
from alt_text_recipes.train.loop import run
from alt_text_recipes.train.modeling import load_processor

from bad_inputs import USABLE, write_corpus
from conftest import TINY_MODELS

BF16_RELATIVE_STEP = 2**-7  # the spacing of bf16 numbers near 1, relative


def _batches(split, processor, is_encoder_decoder):
    collator = Blip2Collator(processor, is_encoder_decoder)
    rows = range(len(split))
    plain = collator([split[i] for i in rows])
    in_workers = collator([prepare_for_training(split, processor)[i] for i in rows])
    cached = collator([prepare_for_training(split, processor, cache=True)[i] for i in rows])
    return plain, in_workers, cached


# The image processor backends this environment has: PIL always, torchvision where it is installed (the GPU
# machine's package mix, `make test-gpu-machine-mix`), where transformers picks it by default.
BACKENDS = ["pil", "torchvision"] if is_torchvision_available() else ["pil"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", sorted(TINY_MODELS))
def test_prepared_images_give_the_processors_batch_exactly(family, backend, tmp_path):
    """Every usable kind of upload (CMYK, alpha, palette, 16-bit, EXIF-rotated, ...) at most the model's input
    size, where JPEG draft decoding has nothing to skip: the fast path's batch is the processor's, bit for bit,
    with either backend (they resize differently: PIL's bicubic and torchvision's differ by a grey level here and
    there, so training must resize as the processor that generates alt text does)."""
    split, _ = check_split(load_caption_dataset(str(write_corpus(tmp_path / "corpus")))["train"], "train")
    assert len(split) == len(USABLE)
    processor = AutoProcessor.from_pretrained(TINY_MODELS[family], backend=backend)
    assert type(processor.image_processor).__name__.endswith("Pil") == (backend == "pil")
    plain, in_workers, cached = _batches(split, processor, family == "t5")
    for fast in (in_workers, cached):
        assert fast.keys() == plain.keys()
        for key in plain:
            assert torch.equal(fast[key], plain[key]), key


def test_the_environment_s_default_backend_is_the_one_inference_uses():
    """What a recipe loads (load_processor, for training and for generation) is transformers' default: torchvision
    where it is installed, so the exactness above is checked for the backend users get."""
    image_processor = load_processor(str(TINY_MODELS["opt"])).image_processor
    assert type(image_processor).__name__ == (
        "BlipImageProcessor" if is_torchvision_available() else "BlipImageProcessorPil"
    )


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
    """The first 10 steps of bf16 full fine-tuning: plain path and fast path (workers, cache) log the same
    losses to within the spacing of bf16 numbers."""
    curves = {}
    for fast in ("false", "true"):
        result = run(
            "full_ft",
            [
                "--config",
                "recipes/configs/tiny/full_ft.yaml",
                "--dtype",
                "bfloat16",
                "--bf16",
                "true",
                "--max_steps",
                "10",
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
    assert len(curves["true"]) == 10
    relative = np.abs(curves["true"] - curves["false"]) / np.abs(curves["false"])
    assert relative.max() < BF16_RELATIVE_STEP, relative
    assert curves["true"][-1] < 0.6 * curves["true"][0]  # and it learns


# The throughput benchmark (benchmarks/throughput.py) on random weights built from a config: run by the dry GPU
# check, and its report checked there (tests/test_gpu_check.py::test_dry_run_throughput_reports_ratios).
