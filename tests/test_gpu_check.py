"""`make gpu-check` rehearsed on CPU: the whole script end to end with the tiny twins (--dry), and its GPU-only
decisions (order, budget, host memory, verdicts, merging) on made-up runs."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import tarfile
import time

import pytest

from alt_text_recipes.outputs.experiment_matrix import RunResult, load_preset

import gpu_check
import gpu_check_matrix
import gpu_check_report
from conftest import REPO_ROOT, python_for_runs
from gpu_check_steps import Check


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

    assert {part: state["status"] for part, state in report["progress"].items()} == dict.fromkeys(
        ("probe", *gpu_check_report.PARTS), "done"
    )
    throughput = report["throughput"]
    assert throughput["status"] == "ok", throughput
    assert set(throughput["loops"]) == {"plain_fair", "ours"} and throughput["fair_train_speedup"] > 0
    assert throughput["peak_tflops"] == report["probe"]["bf16_tflops"]  # MFU against the probe, not a constant
    assert all(loop["mfu"] is not None and loop["samples_per_s"] > 0 for loop in throughput["loops"].values())
    assert (out / "throughput.json").exists() and (out / "throughput.md").exists()

    launches = {launch["name"]: launch for launch in report["launches"]}
    assert set(launches) == {"fsdp4", "ds_zero2_offload"}
    for launch in launches.values():
        assert launch["status"] == "ok" and launch["model_saved"] and launch["train_seconds"] > 0, launch
    assert launches["ds_zero2_offload"]["strategy"].startswith("DEEPSPEED over 1 process")
    assert launches["fsdp4"]["strategy"]  # on a CPU accelerate falls back from FSDP; recorded as it was
    assert report["deepspeed_op"]["status"] == "ok" and report["deepspeed_op"]["seconds"] > 0

    matrix = {entry["preset"]: entry for entry in report["matrix"]}
    assert set(matrix) == set(gpu_check_matrix.DRY_PRESETS)
    for entry in matrix.values():
        assert entry["status"] == "ok", entry
        assert entry["measured"]["peak"] > 0 and entry["estimate"]["total_gb"] > 0
        assert entry["verdict"] in ("correct", "WRONG") and entry["observed"] in ("fit", "over capacity")
        assert entry["reference"]["capacity_gb"] == report["reference_gb"]  # the second capacity: the smaller estimate
        assert entry["reference"]["verdict"] in ("correct", "WRONG"), entry["reference"]
    # The simulated capacity lies between the two estimates: one predicted to fit, one not.
    assert {entry["predicted"] for entry in matrix.values()} == {"fits", "OOM"}
    assert (
        min(e["estimate"]["total_gb"] for e in matrix.values())
        <= report["capacity_gb"]
        < max(e["estimate"]["total_gb"] for e in matrix.values())
    )

    # No GPU: every `gpu` test deselected, pytest's exit 5 (no test ran), a failure like any other.
    assert (report["pytest"]["returncode"], report["pytest"]["status"]) == (5, "failed"), report["pytest"]

    markdown = (out / "results.md").read_text()
    assert "fair_train_speedup (ours ÷ plain_fair samples/s" in markdown
    assert "Verdicts against the reference" in markdown and "DeepSpeed's CPU Adam" in markdown
    for heading in (
        "## Steps",
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
    assert "input_pipeline_speedup = " in printed and "fair_train_speedup = " in printed
    assert "--model_config" in (out / "commands.sh").read_text()
    result = json.loads((out / "throughput.json").read_text())
    assert result["input_pipeline_speedup"] > 0 and result["fair_train_speedup"] > 0 and "train_speedup" not in result
    assert {row["image_size"] for row in result["input_pipeline"]} == {64, 224}
    assert (
        result["training"]["ours"]["attention"] == "sdpa" and result["training"]["plain_fair"]["attention"] == "sdpa"
    )
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
    order = [p.name for p in gpu_check_matrix.matrix_order(presets, estimates, 79.6, 0.5)]
    assert order == ["adam_8bit", "grad_accumulation", "lora", "bf16_true", "qlora", "baseline", "reduced_batch"]
    # On a 141 GB GPU, judged against 80 GB as well: the estimates nearest either capacity first.
    order = [p.name for p in gpu_check_matrix.matrix_order(presets, estimates, 139.6, 0.5, reference_gb=80)]
    assert order[:4] == ["adam_8bit", "grad_accumulation", "baseline", "lora"]


def test_verdicts_compare_what_happened_with_the_prediction():
    preset = load_preset("reduced_batch")
    oom = RunResult("reduced_batch", "", "OOM", estimate=_estimate(82, False), error="...")
    log = "GPU out of memory: the run reached 78.9 GB allocated on a 80 GB GPU.\n"
    judged = gpu_check_matrix.judge(oom, preset, 79.6, log)
    assert (judged["observed"], judged["verdict"], judged["peak_at_oom_gb"]) == ("OOM", "correct", 78.9)
    ran = RunResult("reduced_batch", "", "ok", measured={"peak": 75.0}, estimate=_estimate(82, False))
    assert gpu_check_matrix.judge(ran, preset, 79.6, "")["verdict"] == "WRONG"  # predicted OOM, yet it fitted
    over = RunResult("bf16_true", "", "ok", measured={"peak": 0.7}, estimate=_estimate(41, True))
    assert gpu_check_matrix.judge(over, preset, 0.6, "")["observed"] == "over capacity"  # the dry run's simulated OOM
    failed = RunResult("bf16_true", "", "failed", estimate=_estimate(41, True), error="ImportError: bitsandbytes")
    assert gpu_check_matrix.judge(failed, preset, 79.6, "")["verdict"] == "not checked"


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
    check = Check(args)
    presets = [load_preset(name) for name in ("cpu_offload", "qlora", "bf16_true", "baseline")]
    check.set_presets(presets)
    estimates = {
        "cpu_offload": _estimate(47, True, host=203),
        "qlora": _estimate(25, True),
        "bf16_true": _estimate(41, True),
        "baseline": "RecipeError: no config",
    }
    builds = {"blip2-flan-t5-xxl": (_Finished(), tmp_path / "models/blip2-flan-t5-xxl-weights", tmp_path / "b.log")}
    entries = {e["preset"]: e for e in check.matrix(presets, estimates, 79.6, 125.0, builds)}
    assert [name for name, *_ in launched] == ["bf16_true", "qlora"]
    assert (
        launched[0][1].endswith("blip2-opt-2.7b-skeleton") and launched[0][2] == "2"
    )  # fits: 2 steps, no weights on disk
    assert launched[1][1].endswith("blip2-flan-t5-xxl-weights")  # quantized: the folder written in the background
    assert entries["cpu_offload"]["status"] == "not run" and "203 GB of host memory" in entries["cpu_offload"]["note"]
    assert entries["baseline"]["status"] == "failed" and "no estimate" in entries["baseline"]["note"]

    check.clock.budget = check.clock.elapsed() + 20  # less than a step's minimum left
    late = check.matrix([presets[2]], {"bf16_true": _estimate(41, True)}, 79.6, 125.0, {})
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
    merged = gpu_check_report.merge(earlier, later)
    assert merged["throughput"] == {"status": "ok"} and merged["launches"] == [{"name": "fsdp4"}]
    assert {e["preset"]: e["status"] for e in merged["matrix"]} == {"lora": "ok", "qlora": "ok", "sgd": "ok"}
    assert [s["step"] for s in merged["steps"]] == ["a", "b"]
    cut_off = {"steps": [], "commands": [], "progress": {"throughput": {"status": "interrupted", "reason": "SIGTERM"}}}
    assert gpu_check_report.merge(cut_off, {"steps": [], "commands": []})["throughput"] == {}  # neither call has one


def test_throughput_reports_no_mfu_without_a_measured_peak():
    import throughput
    import throughput_report

    assert throughput_report.peak_tflops(None, None)[0] is None
    assert throughput_report.peak_tflops(500.0, None) == (500.0, "--peak_tflops")
    assert not any(hasattr(module, "MEASURED_PEAK_TFLOPS") for module in (throughput, throughput_report))


# ---------------------------------------------------------------- a call cut off returns what it finished
def test_sigterm_leaves_the_finished_steps_and_marks_the_rest(tmp_path):
    """SIGTERM once the probe's result is written (as a device call's limit sends it): the probe's results stay,
    the step running is marked interrupted, the rest not run, and the process's children are ended."""
    out, work = tmp_path / "out", tmp_path / "work"
    command = [python_for_runs(), "benchmarks/gpu_check.py", "--dry", "--out", str(out), "--work_dir", str(work)]
    process = subprocess.Popen(
        [*command, "--parts", "matrix", "launch"], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        report = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
        if report.get("progress", {}).get("probe", {}).get("status") == "done":
            break
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=60)[0].decode()
    assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
    report = json.loads((out / "results.json").read_text())
    assert report["stopped"] == "SIGTERM" and report["probe"]["bf16_tflops"] > 0
    progress = {part: state["status"] for part, state in report["progress"].items()}
    assert progress["probe"] == "done" and progress["matrix"] in ("interrupted", "done"), progress
    assert progress["launch"] in ("interrupted", "not run"), progress
    assert "**Stopped early: SIGTERM.**" in (out / "results.md").read_text()
    assert json.loads((work / "results.json").read_text())["stopped"] == "SIGTERM"  # for a --merge by the next call
    with tarfile.open(out / "logs.tar.gz") as archive:
        assert "logs/probe.log" in archive.getnames()
    leftover = subprocess.run(["pgrep", "-f", str(work)], capture_output=True, text=True).stdout.split()
    assert not leftover, leftover  # the background builds and the running step went with it


def _results(tmp_path, parts, budget=1000.0):
    args = argparse.Namespace(dry=True, budget=budget, work_dir=str(tmp_path / "work"))
    check = Check(args)
    report = {
        "gpu": "CPU (dry run)",
        "dry": True,
        "date": "today",
        "budget_s": budget,
        "capacity_gb": None,
        "reference_gb": None,
        "host_memory_gb": 24.0,
        "versions": {},
        "python": "python",
        "work_dir": str(check.work),
        "progress": {part: {"status": "not run", "reason": "not reached"} for part in parts},
    }
    results = gpu_check.Results(report, check, tmp_path / "out", None)
    check.publish = results.set
    return check, results


def test_steps_past_the_budget_are_marked_not_run(tmp_path):
    check, results = _results(tmp_path, ("probe", "throughput", "launch", "pytest"), budget=10.0)
    gpu_check.step(results, "throughput", lambda: check.throughput(tmp_path, tmp_path / "probe.json"))
    check.launch_folder = tmp_path
    gpu_check.step(results, "launch", check.launches)
    gpu_check.step(results, "pytest", check.pytest)
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    for part in ("throughput", "launch", "pytest"):
        assert report["progress"][part] == {"status": "not run", "reason": "time budget"}, part
    assert {launch["status"] for launch in report["launches"]} == {"not run"}
    assert "| throughput | not run | time budget |" in (tmp_path / "out" / "results.md").read_text()


def test_a_stop_marks_the_running_step_interrupted_and_the_rest_not_run(tmp_path):
    check, results = _results(tmp_path, ("probe", "matrix", "throughput"))
    results.mark("probe", "done")
    results.mark("matrix", "running")
    results.stop("SIGTERM")
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert report["progress"] == {
        "probe": {"status": "done", "reason": ""},
        "matrix": {"status": "interrupted", "reason": "SIGTERM"},
        "throughput": {"status": "not run", "reason": "stopped first: SIGTERM"},
    }
    assert check.clock.left() == 0  # no step starts after a stop


def test_a_failing_step_is_recorded_and_the_next_one_runs(tmp_path):
    _, results = _results(tmp_path, ("probe", "throughput", "pytest"))

    def broken():
        raise RuntimeError("no throughput here")

    gpu_check.step(results, "throughput", broken)
    gpu_check.step(results, "pytest", lambda: {"status": "ok", "returncode": 0, "seconds": 1.0})
    progress = results.full()["progress"]
    assert progress["throughput"] == {"status": "failed", "reason": "RuntimeError: no throughput here"}
    assert progress["pytest"]["status"] == "done"


def test_verdicts_against_the_reference_gpu_as_well_as_the_measured_capacity():
    preset = load_preset("bf16_true")
    fitted = RunResult("bf16_true", "", "ok", measured={"peak": 100.0}, estimate=_estimate(90, True))
    entry = gpu_check_matrix.judge(fitted, preset, 139.6, "", reference_gb=80, context_gb=0.5)
    assert (entry["predicted"], entry["observed"], entry["verdict"]) == ("fits", "fit", "correct")
    assert entry["reference"] == {
        "capacity_gb": 80,
        "predicted": "OOM",
        "observed": "over capacity",
        "verdict": "correct",
    }
    small = RunResult("bf16_true", "", "ok", measured={"peak": 70.0}, estimate=_estimate(85, True))
    assert gpu_check_matrix.judge(small, preset, 139.6, "", 80, 0.5)["reference"]["verdict"] == "WRONG"
    oom = RunResult("bf16_true", "", "OOM", estimate=_estimate(150, False), error="...")
    at_80 = gpu_check_matrix.judge(oom, preset, 139.6, "", 80, 0.5)["reference"]
    assert (at_80["observed"], at_80["verdict"]) == ("OOM", "correct")  # out of memory on 141 GB: on 80 too
    failed = RunResult("bf16_true", "", "failed", estimate=_estimate(41, True), error="ImportError")
    assert gpu_check_matrix.judge(failed, preset, 139.6, "", 80, 0.5)["reference"]["verdict"] == "not checked"


def test_a_merged_call_runs_what_the_earlier_one_left():
    args = gpu_check.parse_args(["--merge", "x.json"])
    earlier = {
        "dry": False,
        "matrix": [
            {"preset": "lora", "status": "ok"},
            {"preset": "qlora", "status": "not run", "note": "time budget"},
            {"preset": "cpu_offload", "status": "not run", "note": "needs 203 GB of host memory (estimate)"},
        ],
        "throughput": {"status": "ok"},
        "launches": [{"name": "fsdp4", "status": "ok"}, {"name": "ds_zero2_offload", "status": "not run"}],
        "pytest": {"status": "not run"},
    }
    parts, presets = gpu_check.what_to_run(args, earlier)
    assert parts == ["matrix", "launch", "pytest"]
    names = {preset.name for preset in presets}
    assert "qlora" in names and not names & {"lora", "cpu_offload"}
