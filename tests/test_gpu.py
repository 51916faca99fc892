"""On a CUDA GPU: every recipe at real width (random weights, fewer layers), launched as a user launches it,
with bf16, 8-bit AdamW, 4-bit QLoRA and activation checkpointing; the memory report measures the GPU and its
parameters, gradients and optimizer state match the estimator; NVML telemetry reads real values.

Every test here carries the `gpu` marker: on a machine without CUDA they are deselected (tests/conftest.py),
and `make test-gpu` (`pytest -m gpu`) runs only them. Nothing is downloaded: the real configs ship in
data/model_configs and `build_random_model` gives them random weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText

from alt_text_recipes.memory.estimator import estimate
from alt_text_recipes.train.arguments import parse_recipe_args
from alt_text_recipes.train.random_weights import build_random_model

from conftest import TINY_MODELS, logged_losses, run_recipe

pytestmark = pytest.mark.gpu

MODEL = "blip2-opt-2.7b"
LAYERS = 4  # per stack (ViT 39, Q-Former 12, OPT 32 in the real model): real widths, a quick build and run
DEVICE_FLAGS = ["--use_cpu", "false"]
PEAK_SOURCE = "GPU max allocated"
BATCH = "4"
# bf16 weights and compute, activation checkpointing, a short run on a slice of the embedded photos.
COMMON = [
    "--dataset_name",
    "data/gourmetgram-mini",
    "--max_train_samples",
    "64",
    "--max_steps",
    "6",
    "--per_device_train_batch_size",
    BATCH,
    "--logging_steps",
    "1",
    "--memory_report_steps",
    "0",
    "--save_strategy",
    "no",
    "--dtype",
    "bfloat16",
    "--bf16",
    "true",
    "--gradient_checkpointing",
    "true",
    "--report_to",
    "none",
    *DEVICE_FLAGS,
]
RECIPE_FLAGS = {
    "full_ft": ["--optim", "adamw_bnb_8bit", "--learning_rate", "1e-4"],  # every weight, 8-bit AdamW
    "lora": ["--optim", "adamw_bnb_8bit"],  # bf16 base + LoRA
    "qlora": [],  # the recipe's defaults: 4-bit NF4 base, paged 8-bit AdamW
}


def _build(folder: Path, layers: int | None) -> Path:
    path = build_random_model(MODEL, folder, layers=layers, dtype="bfloat16")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the weights were made on the GPU: leave its memory to the recipe's process
    return path


@pytest.fixture(scope="module")
def real_width_model(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("random-weights") / f"{MODEL}-{LAYERS}-layers", LAYERS)


def _memory_logs(output_dir: Path) -> list[dict]:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [entry for entry in history if "memory/params_gb" in entry]


def _check_run(result, output_dir: Path, recipe: str, model: Path, args: list[str]) -> list[float]:
    """The run completed, reported memory on the GPU, and its counted parts are the estimator's within 10%."""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("[memory] step ")]
    assert any(line.startswith("[memory] step 0 |") for line in lines), result.stdout[-3000:]
    assert any(line.startswith("[memory] step 1 |") for line in lines), result.stdout[-3000:]
    assert all(f"({PEAK_SOURCE})" in line for line in lines), lines
    assert "train time: " in result.stdout and "| peak memory: " in result.stdout

    losses = logged_losses(output_dir)
    assert len(losses) >= 5 and all(math.isfinite(loss) for loss in losses), losses

    measured = _memory_logs(output_dir)[-1]  # the report after the first optimizer step
    assert measured["memory/grads_gb"] > 0 and measured["memory/optimizer_gb"] > 0, measured
    script_args, training_args, model_args = parse_recipe_args(
        recipe, [*args, "--model_name_or_path", str(model), "--output_dir", str(output_dir)]
    )
    predicted = estimate(script_args, training_args, model_args, caption_tokens=20)
    for part in ("params", "grads", "optimizer"):
        assert getattr(predicted, f"{part}_gb") == pytest.approx(measured[f"memory/{part}_gb"], rel=0.10), (
            part,
            predicted,
            measured,
        )
    return losses


@pytest.mark.parametrize("recipe", sorted(RECIPE_FLAGS))
def test_recipe_at_real_width_trains_and_memory_matches_the_estimate(recipe, real_width_model, tmp_path):
    output_dir = tmp_path / "out"
    args = [*COMMON, *RECIPE_FLAGS[recipe]]
    result = run_recipe(
        recipe, *args, "--model_name_or_path", str(real_width_model), "--output_dir", str(output_dir), timeout=600
    )
    losses = _check_run(result, output_dir, recipe, real_width_model, args)
    if recipe == "full_ft":  # every weight at 1e-4 moves the loss of random weights within a few steps
        assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2, f"loss did not fall: {losses}"
    if recipe == "qlora":
        assert "trainable" in result.stdout


def test_full_depth_model_trains_with_eight_bit_adam(tmp_path_factory, tmp_path):
    """blip2-opt-2.7b at its real depth (3.7 B parameters): full fine-tuning, bf16, 8-bit AdamW, checkpointing."""
    model = _build(tmp_path_factory.mktemp("random-weights") / f"{MODEL}-full", None)
    output_dir = tmp_path / "out"
    args = [
        *COMMON,
        *RECIPE_FLAGS["full_ft"],
        "--max_steps",
        "3",
        "--max_train_samples",
        "16",
        "--per_device_train_batch_size",
        "2",
    ]
    result = run_recipe(
        "full_ft", *args, "--model_name_or_path", str(model), "--output_dir", str(output_dir), timeout=900
    )
    _check_run(result, output_dir, "full_ft", model, args)


def test_memory_report_runs_on_cuda_with_telemetry(tmp_path):
    """The tiny model on the GPU: the report measures the allocator and carries the GPU's telemetry."""
    output_dir = tmp_path / "out"
    result = run_recipe(
        "full_ft",
        "--config",
        "recipes/configs/tiny/full_ft.yaml",
        *DEVICE_FLAGS,
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "8",
        "--memory_report_steps",
        "1",
        "--output_dir",
        str(output_dir),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("[memory] step ")]
    assert len(lines) >= 2 and all(f"({PEAK_SOURCE})" in line for line in lines), lines
    assert all("reserved" in line for line in lines), lines
    logs = _memory_logs(output_dir)
    num_params = sum(p.numel() for p in AutoModelForImageTextToText.from_pretrained(TINY_MODELS["opt"]).parameters())
    for entry in logs:
        assert entry["memory/params_gb"] * 2**30 == pytest.approx(4 * num_params, rel=0.01)  # fp32 weights
        assert entry["memory/peak_gb"] > 0
        assert 0 < entry["memory/gpu_allocated_gb"] <= entry["memory/gpu_reserved_gb"]
        assert entry["memory/cpu_util_pct"] >= 0 and entry["memory/cpu_cores"] >= 1
    # nvidia-ml-py is a pinned dependency (and among the wheels carried to the lent machine): its readings
    # must be there, not skipped.
    assert all("memory/gpu_util_pct" in entry and "memory/gpu_power_w" in entry for entry in logs), logs


def test_nvml_telemetry_reads_real_values():
    from alt_text_recipes.memory.telemetry import Telemetry, describe

    telemetry = Telemetry()
    device = torch.device("cuda", torch.cuda.current_device())
    x = torch.randn(4096, 4096, device=device)
    for _ in range(20):
        x = x @ x / 64
    torch.cuda.synchronize()
    values = telemetry.sample(device)
    assert 0 <= values["gpu_util_pct"] <= 100
    assert 10 < values["gpu_power_w"] < 2000  # an idle H100 draws ~70 W, its limit is 700 W
    assert (
        values["gpu_allocated_gb"] >= 4096 * 4096 * 4 / 2**30
        and values["gpu_reserved_gb"] >= values["gpu_allocated_gb"]
    )
    text = describe(values)
    assert "GPU util" in text and " W" in text and "reserved" in text
