"""`make gpu-check` rehearsed on CPU: the whole script end to end with the tiny twins (--dry), and its GPU-only
decisions (order, budget, host memory, verdicts, merging) on made-up runs."""

from __future__ import annotations

import argparse
import json
import subprocess
import tarfile

import pytest

from alt_text_recipes.experiments import RunResult, load_preset

import gpu_check
from conftest import REPO_ROOT, python_for_runs


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One dry run: its results folder and its output. Started warm, its steps too (about 20 s here; cold,
    as `make gpu-check-dry` runs it, about 1.5-2.5 minutes on 2 cores)."""
    root = tmp_path_factory.mktemp("gpu-check")
    finished = subprocess.run(
        [
            python_for_runs(),  # warm, and so are the steps it starts
            "benchmarks/gpu_check.py",
            "--dry",
            "--out",
            str(root / "out"),
            "--work_dir",
            str(root / "work"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert finished.returncode == 0, finished.stdout[-4000:] + finished.stderr[-4000:]
    return root / "out", finished.stdout


def test_dry_run_measures_every_step_and_writes_the_report(dry_run):
    out, stdout = dry_run
    report = json.loads((out / "results.json").read_text())
    assert report["dry"] and report["probe"]["bf16_tflops"] > 0 and report["probe"]["cuda"] is None

    throughput = report["throughput"]
    assert throughput["status"] == "ok", throughput
    assert set(throughput["loops"]) == {"plain", "plain_fair", "ours"}
    assert throughput["peak_tflops"] == report["probe"]["bf16_tflops"]  # MFU against the probe, not a constant
    assert all(loop["mfu"] is not None and loop["samples_per_s"] > 0 for loop in throughput["loops"].values())
    assert (out / "throughput.json").exists() and (out / "throughput.md").exists()

    launches = {launch["name"]: launch for launch in report["launches"]}
    assert set(launches) == {"fsdp4", "ds_zero2_offload"}
    for launch in launches.values():
        assert launch["status"] == "ok" and launch["model_saved"] and launch["train_seconds"] > 0, launch
    assert launches["ds_zero2_offload"]["strategy"].startswith("DEEPSPEED over 1 process")
    assert launches["fsdp4"]["strategy"]  # on a CPU accelerate falls back from FSDP; recorded as it was

    matrix = {entry["preset"]: entry for entry in report["matrix"]}
    assert set(matrix) == set(gpu_check.DRY_PRESETS)
    for entry in matrix.values():
        assert entry["status"] == "ok", entry
        assert entry["measured"]["peak"] > 0 and entry["estimate"]["total_gb"] > 0
        assert entry["verdict"] in ("correct", "WRONG") and entry["observed"] in ("fit", "over capacity")
    # The simulated capacity lies between the two estimates: one predicted to fit, one not.
    assert {entry["predicted"] for entry in matrix.values()} == {"fits", "OOM"}
    assert (
        min(e["estimate"]["total_gb"] for e in matrix.values())
        <= report["capacity_gb"]
        < max(e["estimate"]["total_gb"] for e in matrix.values())
    )

    assert report["pytest"]["returncode"] in (0, 5), report["pytest"]  # 5: no test marked gpu

    markdown = (out / "results.md").read_text()
    for heading in (
        "## Matmul probe",
        "## Technique matrix",
        "## Throughput",
        "## accelerate launch",
        "## pytest -m gpu",
        "## Time per step",
        "## Commands",
    ):
        assert heading in markdown
    commands = (out / "commands.sh").read_text()
    for command in (
        "benchmarks/matmul_probe.py",
        "benchmarks/throughput.py",
        "accelerate_configs/fsdp4.yaml",
        "accelerate_configs/ds_zero2_offload.yaml --num_processes 1",
        "recipes/qlora.py",
        "recipes/full_ft.py --config recipes/configs/matrix/baseline.yaml",
        "-m pytest tests/test_gpu.py",
    ):
        assert command in commands, command
    assert (out / "memory.png").stat().st_size > 10_000
    with tarfile.open(out / "logs.tar.gz") as archive:
        names = archive.getnames()
    assert "logs/baseline.log" in names and "logs/pytest.log" in names
    assert "[gpu-check" in stdout and {step["step"] for step in report["steps"]} >= {"matmul probe", "throughput"}


def test_dry_run_throughput_reports_ratios(dry_run):
    """The throughput benchmark as the check runs it: on random weights built from a config (--model_config),
    as on a GPU; its table and JSON."""
    out, _ = dry_run
    with tarfile.open(out / "logs.tar.gz") as archive:
        printed = archive.extractfile("logs/throughput.log").read().decode()
    assert "input_pipeline_speedup = " in printed and "train_speedup = " in printed
    assert "--model_config" in (out / "commands.sh").read_text()
    result = json.loads((out / "throughput.json").read_text())
    assert result["input_pipeline_speedup"] > 0 and result["train_speedup"] > 0
    assert {row["image_size"] for row in result["input_pipeline"]} == {64, 224}
    assert result["training"]["ours"]["attention"] == "sdpa" and result["training"]["plain"]["attention"] == "eager"
    flops = result["model_flops_per_sample"]
    parts = [flops[part] for part in ("vision_model", "qformer", "language_model")]
    assert all(value > 0 for value in parts) and sum(parts) <= flops["total"]
    assert (out / "throughput.md").read_text().count("|") > 20


# ---------------------------------------------------------------- the GPU-only decisions, on made-up runs
def _estimate(total: float, fits: bool, host: float = 0.0) -> dict:
    return {
        "params_gb": 1.0,
        "grads_gb": 1.0,
        "optimizer_gb": 2.0,
        "activations_gb": total - 4.0,
        "other_gb": 0.0,
        "total_gb": total,
        "host_gb": host,
        "fits": fits,
    }


def test_matrix_runs_the_verdicts_most_in_doubt_first_and_repeated_estimates_last():
    names = ("baseline", "bf16_true", "qlora", "lora", "reduced_batch", "grad_accumulation", "adam_8bit")
    presets = [load_preset(name) for name in names]
    estimates = {
        "baseline": _estimate(145, False),
        "bf16_true": _estimate(41, True),
        "qlora": _estimate(25, True),
        "lora": _estimate(60, True),
        "reduced_batch": _estimate(82, False),
        "grad_accumulation": _estimate(82, False),
        "adam_8bit": _estimate(77, True),
    }
    order = [p.name for p in gpu_check.matrix_order(presets, estimates, 79.6, 0.5)]
    assert order == ["adam_8bit", "grad_accumulation", "lora", "bf16_true", "qlora", "baseline", "reduced_batch"]


def test_verdicts_compare_what_happened_with_the_prediction():
    preset = load_preset("reduced_batch")
    oom = RunResult("reduced_batch", "", "OOM", estimate=_estimate(82, False), error="...")
    log = "GPU out of memory: the run reached 78.9 GB allocated on a 80 GB GPU.\n"
    judged = gpu_check.judge(oom, preset, 79.6, log)
    assert (judged["observed"], judged["verdict"], judged["peak_at_oom_gb"]) == ("OOM", "correct", 78.9)
    ran = RunResult("reduced_batch", "", "ok", measured={"peak": 75.0}, estimate=_estimate(82, False))
    assert gpu_check.judge(ran, preset, 79.6, "")["verdict"] == "WRONG"  # predicted OOM, yet it fitted
    over = RunResult("bf16_true", "", "ok", measured={"peak": 0.7}, estimate=_estimate(41, True))
    assert gpu_check.judge(over, preset, 0.6, "")["observed"] == "over capacity"  # the dry run's simulated OOM
    failed = RunResult("bf16_true", "", "failed", estimate=_estimate(41, True), error="ImportError: bitsandbytes")
    assert gpu_check.judge(failed, preset, 79.6, "")["verdict"] == "not checked"


class _Finished:
    returncode = 0

    def poll(self):
        return 0

    def wait(self, timeout=None):
        return 0


def test_matrix_skips_host_memory_overflows_and_presets_past_the_budget(tmp_path, monkeypatch):
    import experiments

    launched = []

    def fake_run_preset(preset, tiny, out_dir, timeout, gpu_memory, extra_args, prediction, device):
        launched.append(
            (
                preset.name,
                extra_args[extra_args.index("--model_name_or_path") + 1],
                extra_args[extra_args.index("--max_steps") + 1],
                timeout,
            )
        )
        (out_dir / "logs").mkdir(parents=True, exist_ok=True)
        (out_dir / "logs" / f"{preset.name}.log").write_text("")
        return RunResult(
            preset.name,
            preset.title,
            "ok",
            measured={"peak": 10.0},
            estimate=prediction,
            command=f"python recipes/{preset.recipe}.py",
        )

    monkeypatch.setattr(experiments, "run_preset", fake_run_preset)
    args = argparse.Namespace(dry=False, budget=1000.0, work_dir=str(tmp_path))
    check = gpu_check.Check(args)
    presets = [load_preset(name) for name in ("cpu_offload", "qlora", "bf16_true", "baseline")]
    check.set_presets(presets)
    estimates = {
        "cpu_offload": _estimate(47, True, host=203),
        "qlora": _estimate(25, True),
        "bf16_true": _estimate(41, True),
        "baseline": "RecipeError: no config",
    }
    builds = {"blip2-flan-t5-xxl": (_Finished(), tmp_path / "models/blip2-flan-t5-xxl-weights", tmp_path / "b.log")}
    entries = {e["preset"]: e for e in check.matrix(presets, estimates, 79.6, 125.0, builds, reserve=0)}
    assert [name for name, *_ in launched] == ["bf16_true", "qlora"]
    assert (
        launched[0][1].endswith("blip2-opt-2.7b-skeleton") and launched[0][2] == "2"
    )  # fits: 2 steps, no weights on disk
    assert launched[1][1].endswith("blip2-flan-t5-xxl-weights")  # quantized: the folder written in the background
    assert entries["cpu_offload"]["status"] == "not run" and "203 GB of host memory" in entries["cpu_offload"]["note"]
    assert entries["baseline"]["status"] == "failed" and "no estimate" in entries["baseline"]["note"]

    check.clock.budget = check.clock.elapsed() + 40  # 40 s left, 30 of them reserved for pytest
    late = check.matrix([presets[2]], {"bf16_true": _estimate(41, True)}, 79.6, 125.0, {}, reserve=30)
    assert late[0]["status"] == "not run" and late[0]["note"] == "time budget" and len(launched) == 2


def test_merge_keeps_what_a_later_call_did_not_run():
    earlier = {
        "gpu": "H100",
        "throughput": {"status": "ok"},
        "launches": [{"name": "fsdp4"}],
        "pytest": {"status": "ok"},
        "matrix": [{"preset": "lora", "status": "ok"}, {"preset": "qlora", "status": "ok"}],
        "steps": [{"step": "a"}],
        "commands": [{"step": "a", "command": "x"}],
    }
    later = {
        "gpu": "H100",
        "throughput": {},
        "launches": [],
        "pytest": {},
        "matrix": [{"preset": "qlora", "status": "not run"}, {"preset": "sgd", "status": "ok"}],
        "steps": [{"step": "b"}],
        "commands": [{"step": "b", "command": "y"}],
    }
    merged = gpu_check.merge(earlier, later, {"matrix"})
    assert merged["throughput"] == {"status": "ok"} and merged["launches"] == [{"name": "fsdp4"}]
    assert {e["preset"]: e["status"] for e in merged["matrix"]} == {"lora": "ok", "qlora": "ok", "sgd": "ok"}
    assert [s["step"] for s in merged["steps"]] == ["a", "b"]


def test_throughput_reports_no_mfu_without_a_measured_peak():
    import throughput

    assert throughput.peak_tflops(None, None)[0] is None
    assert throughput.peak_tflops(500.0, None) == (500.0, "--peak_tflops")
    assert not hasattr(throughput, "MEASURED_PEAK_TFLOPS")
