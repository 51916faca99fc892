"""The memory breakdown counts what is really there, on CPU."""

from __future__ import annotations

import pytest

from conftest import TINY_MODELS
from core.train import run

BASE_ARGS = ["--config", "recipes/configs/tiny/full_ft.yaml", "--max_steps", "1", "--per_device_train_batch_size", "8",
             "--model_name_or_path", str(TINY_MODELS["opt"])]


def _train_one_step(tmp_path, *extra: str, defaults=None):
    result = run(defaults or {}, [*BASE_ARGS, "--output_dir", str(tmp_path), *extra])
    steps = [report.step for report in result.memory_reports]
    assert steps == [0, 1]
    return result.memory_reports


def test_full_fine_tuning_breakdown_matches_adamw_arithmetic(tmp_path):
    from transformers import AutoModelForImageTextToText

    num_params = sum(p.numel() for p in AutoModelForImageTextToText.from_pretrained(TINY_MODELS["opt"]).parameters())
    start, step1 = _train_one_step(tmp_path, "--optim", "adamw_torch")
    assert start.params == step1.params == pytest.approx(4 * num_params, rel=0.01)  # fp32 weights
    assert start.grads == 0 and start.optimizer == 0
    assert step1.grads == pytest.approx(4 * num_params, rel=0.01)  # every weight trains
    assert step1.optimizer == pytest.approx(8 * num_params, rel=0.01)  # AdamW: two fp32 moments
    assert step1.activations > 0 and step1.peak >= step1.params + step1.grads + step1.optimizer


def test_eight_bit_adam_and_sgd_shrink_optimizer_state(tmp_path):
    adamw = _train_one_step(tmp_path / "a", "--optim", "adamw_torch")[1]
    adam8 = _train_one_step(tmp_path / "b", "--optim", "adamw_bnb_8bit")[1]
    sgd = _train_one_step(tmp_path / "c", "--optim", "sgd")[1]
    assert adam8.optimizer < 0.45 * adamw.optimizer  # 2 bytes per parameter where quantized, vs 8
    assert sgd.optimizer == 0  # no momentum: no state


def test_activation_checkpointing_reduces_measured_activations(tmp_path):
    plain = _train_one_step(tmp_path / "a")[1]
    checkpointed = _train_one_step(tmp_path / "b", "--gradient_checkpointing", "true")[1]
    assert checkpointed.activations < 0.7 * plain.activations


def test_activations_grow_with_batch_size(tmp_path):
    small = _train_one_step(tmp_path / "a", "--per_device_train_batch_size", "4")[1]
    large = _train_one_step(tmp_path / "b", "--per_device_train_batch_size", "16")[1]
    assert large.activations > 3 * small.activations
