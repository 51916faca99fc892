"""The memory breakdown counts what is really there, on CPU."""

from __future__ import annotations

import pytest

from alt_text_recipes.train.loop import run

from conftest import TINY_MODELS

BASE_ARGS = [
    "--config",
    "recipes/configs/tiny/full_ft.yaml",
    "--max_steps",
    "1",
    "--per_device_train_batch_size",
    "8",
    "--model_name_or_path",
    str(TINY_MODELS["opt"]),
]


def _train_one_step(tmp_path, *extra: str, recipe=None):
    result = run(recipe, [*BASE_ARGS, "--output_dir", str(tmp_path), *extra])
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


# --- Telemetry: how busy the hardware was at each report (recipes/alt_text_recipes/memory/telemetry.py)
# ---------------


def test_cpu_run_reports_cpu_utilisation_in_the_line_and_the_logs(tmp_path, capsys):
    import json

    reports = _train_one_step(tmp_path)
    stdout = capsys.readouterr().out
    lines = [line for line in stdout.splitlines() if line.startswith("[memory] step ")]
    assert len(lines) == 2 and all("% of a core (" in line and "process peak RSS" in line for line in lines), lines
    for report in reports:
        assert report.peak_source == "process peak RSS"  # --use_cpu true: the process, GPU or not
        assert report.telemetry["cpu_util_pct"] >= 0 and report.telemetry["cpu_cores"] >= 1
        assert not any(name.startswith("gpu_") for name in report.telemetry)
    assert reports[1].telemetry["cpu_util_pct"] > 0  # a training step keeps a core busy
    history = json.loads((tmp_path / "trainer_state.json").read_text())["log_history"]
    logged = [entry for entry in history if "memory/params_gb" in entry]
    assert len(logged) == 2 and all("memory/cpu_util_pct" in entry and "memory/cpu_cores" in entry for entry in logged)


class FakeNVML:
    """Stands in for `pynvml` (nvidia-ml-py) on a machine without an NVIDIA driver."""

    def __init__(self):
        self.indices = []

    def nvmlInit(self):
        pass

    def nvmlDeviceGetHandleByIndex(self, index):
        self.indices.append(index)
        return f"handle-{index}"

    def nvmlDeviceGetUtilizationRates(self, handle):
        from types import SimpleNamespace

        return SimpleNamespace(gpu=73, memory=40)

    def nvmlDeviceGetPowerUsage(self, handle):
        return 251_400  # milliwatts


@pytest.fixture
def fake_cuda(monkeypatch):
    """NVML mocked and CUDA's allocator counters faked: 1 GiB allocated, 1.5 GiB reserved."""
    import sys

    import torch

    nvml = FakeNVML()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 2**30)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 3 * 2**29)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return nvml


def test_gpu_telemetry_fills_the_report_with_nvml(fake_cuda, capsys):
    from types import SimpleNamespace

    import torch

    from alt_text_recipes.memory.measured import MemoryBreakdown, MemoryBreakdownCallback

    logged = []
    callback = MemoryBreakdownCallback()
    callback.trainer = SimpleNamespace(log=logged.append)
    callback._device = torch.device("cuda", 0)  # what on_train_begin takes from the Trainer's arguments
    report = MemoryBreakdown(
        1,
        params=2**30,
        grads=2**30,
        optimizer=2**31,
        activations=2**28,
        peak=5 * 2**30,
        peak_source="GPU max allocated",
    )
    callback._report(SimpleNamespace(is_world_process_zero=True), report)
    telemetry = callback.reports[0].telemetry
    assert telemetry["gpu_util_pct"] == 73 and telemetry["gpu_power_w"] == pytest.approx(251.4)
    assert telemetry["gpu_allocated_gb"] == 1.0 and telemetry["gpu_reserved_gb"] == 1.5
    assert "cpu_util_pct" in telemetry and fake_cuda.indices == [0]
    line = capsys.readouterr().out.strip()
    assert line.startswith("[memory] step 1 |") and line.endswith(
        "(GPU max allocated) | GPU util 73% | allocated 1.00 / reserved 1.50 GB | 251 W"
    ), line
    assert logged[0]["memory/gpu_util_pct"] == 73 and logged[0]["memory/gpu_reserved_gb"] == 1.5
    assert logged[0]["memory/gpu_power_w"] == pytest.approx(251.4) and logged[0]["memory/params_gb"] == 1.0


def test_gpu_telemetry_without_nvml_keeps_the_allocator_figures(fake_cuda, monkeypatch):
    import sys

    import torch

    from alt_text_recipes.memory.telemetry import Telemetry, describe

    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed: import fails
    values = Telemetry().sample(torch.device("cuda", 0))
    assert "gpu_util_pct" not in values and "gpu_power_w" not in values
    assert values["gpu_reserved_gb"] == 1.5
    assert describe(values) == "allocated 1.00 / reserved 1.50 GB"


def test_nvml_numbers_the_device_as_cuda_visible_devices_maps_it(fake_cuda, monkeypatch):
    import torch

    from alt_text_recipes.memory.telemetry import Telemetry

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    Telemetry().sample(torch.device("cuda", 1))
    assert fake_cuda.indices == [3]


def test_peak_memory_follows_the_training_device(monkeypatch):
    """A CPU run on a GPU machine (CUDA initialised by something else) measures the process, not the GPU."""
    import torch

    from alt_text_recipes.memory.measured import peak_memory

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 123)
    assert peak_memory("cuda:0") == (123, "GPU max allocated")
    assert peak_memory(None) == (123, "GPU max allocated")
    assert peak_memory(torch.device("cpu"))[1] == "process peak RSS"
