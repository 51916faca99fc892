"""gpu_check's technique matrix: every preset through the command a user types, on its real model with random
weights, beside the estimator's prediction, judged against the measured capacity and a reference GPU (80 GB,
the GPU the presets are written for). `MatrixSteps` is mixed into gpu_check_steps.Check."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from gpu_check_report import last_line, ran

REPO_ROOT = Path(__file__).resolve().parents[1]
DRY_PRESETS = ("baseline", "qlora")
# Dry run: a small batch (4-bit matrix products at batch 64 take seconds on a CPU); the plumbing is the same.
DRY_RECIPE_FLAGS = ["--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1"]
REFERENCE_GB = 80.0  # the GPU the presets are written for (an 80 GB H100/A100)
CONTEXT_GB = 0.5  # alt_text_recipes.memory.estimator's CUDA_CONTEXT_GB: the context and kernels, outside the allocator
MIN_STEP_S = 30  # a step is not started with less than this left


class MatrixSteps:
    """The matrix's part of the check (needs the check's clock, limits, work folder, run/record/publish)."""

    # -- models
    def model_source(self, preset) -> str:
        from alt_text_recipes.outputs.experiment_matrix import tiny_model_for

        name = preset.settings["model_name_or_path"]
        return str(REPO_ROOT / tiny_model_for(name)) if self.dry else name.split("/")[-1]

    def model_folder(self, source: str, kind: str) -> Path:
        return self.work / "models" / f"{Path(source).name}-{kind}"

    def skeleton(self, source: str) -> Path:
        from alt_text_recipes.train.random_weights import build_random_model

        folder = self.model_folder(source, "skeleton")
        self.record(
            "matrix: a skeleton (config and processor; the recipe draws the weights on the GPU)",
            'PYTHONPATH=recipes:$PYTHONPATH "$PYTHON" -c '
            f"'from alt_text_recipes.train.random_weights import build_random_model; "
            f'build_random_model("{source}", "{folder}", weights=False)\'',
        )
        return build_random_model(source, folder, weights=False)

    def start_weights_build(self, source: str) -> tuple[subprocess.Popen, Path, Path]:
        """Write `source`'s weights folder in the background from the start, beside the probe: drawn on the GPU
        (seconds; on a CPU, 12B random numbers take minutes), then saved; a later call on the same machine reuses
        it (the folder's marker). The matrix waits for it before its first preset."""
        folder = self.model_folder(source, "weights")
        command = [sys.executable, str(REPO_ROOT / "benchmarks/gpu_check.py"), "--build_model", source, str(folder)]
        command += ["--device", "cpu" if self.dry else "cuda"]
        self.record("matrix: weights folder for the quantized preset", command)
        log = self.logs / f"build-{Path(source).name}.log"
        with open(log, "w") as output:
            process = subprocess.Popen(
                command, cwd=REPO_ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )
        print(f"writing {folder} in the background (log {log})", flush=True)
        return process, folder, log

    # -- the step
    def matrix(self, presets, done: dict[str, dict | str], capacity_gb: float, host_gb: float, builds: dict) -> list:
        """Each preset beside its estimate (`done`: the estimate, or why there is none), the verdicts most in
        doubt first; each result is published (written to the results folder) as it comes."""
        from experiments import run_preset

        failed = {name: value for name, value in done.items() if isinstance(value, str)}
        predicted = {name: value for name, value in done.items() if not isinstance(value, str)}
        context_gb = 0.0 if self.dry else CONTEXT_GB
        order = matrix_order(
            [p for p in presets if p.name in predicted], predicted, capacity_gb, context_gb, self.reference_gb
        )
        entries = {p.name: _not_run(p, predicted.get(p.name, {}), "not run", "not reached") for p in order}
        for preset in [p for p in presets if p.name in failed]:
            entries[preset.name] = _not_run(preset, {}, "failed", f"no estimate: {failed[preset.name]}")
        self.publish("matrix", list(entries.values()))
        # The weights folders hold GPU memory while they are written: no preset runs beside them.
        weights_errors = {source: self.finish_weights_build(build) for source, build in builds.items() if order}
        for preset in order:
            estimate = predicted[preset.name]
            source = self.model_source(preset)
            if not self.dry and estimate["host_gb"] > 0.9 * host_gb:
                note = (
                    f"needs {estimate['host_gb']:.0f} GB of host memory (estimate); this machine has {host_gb:.0f} GB"
                )
                entries[preset.name] = _not_run(preset, estimate, "not run", note)
                continue
            limit = self.clock.limit(self.limits["preset"])
            if limit < MIN_STEP_S:
                entries[preset.name] = _not_run(preset, estimate, "not run", "time budget")
                continue
            folder = self.model_folder(source, "skeleton")
            if preset.name in self.quantized:
                error = weights_errors.get(source, "its weights folder was not started")
                if error:
                    status = "not run" if "budget" in error else "failed"
                    entries[preset.name] = _not_run(preset, estimate, status, error)
                    continue
                folder = self.model_folder(source, "weights")
            with self.clock.step(f"matrix: {preset.name}"):
                flags = self.run_flags(folder, "1" if self.dry or not estimate["fits"] else "2")
                shutil.rmtree(self.work / "runs" / preset.name, ignore_errors=True)  # no earlier call's measurements
                device = "cpu" if self.dry else "cuda"
                result = run_preset(preset, self.dry, self.work, limit, capacity_gb, flags, estimate, device)
                self.record(f"matrix: {preset.name}", result.command.replace(sys.executable, '"$PYTHON"', 1))
                log = (self.work / "logs" / f"{preset.name}.log").read_text()
            entries[preset.name] = judge(result, preset, capacity_gb, log, self.reference_gb, context_gb)
            self.publish("matrix", list(entries.values()))
        return list(entries.values())

    def run_flags(self, folder: Path, steps: str) -> list[str]:
        flags = [
            *("--model_name_or_path", str(folder), "--max_steps", steps, "--logging_steps", "1"),
            *("--memory_report_steps", "1", "--save_final_model", "false", "--report_to", "none"),
            *("--disable_tqdm", "true", "--show_examples", "0", "--eval_strategy", "no"),
        ]
        return flags + (DRY_RECIPE_FLAGS if self.dry else [])

    def finish_weights_build(self, build: tuple[subprocess.Popen, Path, Path]) -> str:
        """Wait for a weights folder being written; why it cannot be used, or ""."""
        process, folder, log = build
        if process.poll() is None:
            with self.clock.step(f"matrix: waiting for {folder.name}"):
                try:
                    process.wait(timeout=max(self.clock.limit(self.limits["weights"]), 1))
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                    return "time budget: its weights folder was not written in time"
        return f"writing its weights folder failed: {last_line(log.read_text())}" if process.returncode else ""

    @property
    def quantized(self) -> set[str]:
        return self._quantized

    def set_presets(self, presets) -> None:
        self._quantized = {
            p.name
            for p in presets
            if p.recipe == "qlora" or p.settings.get("load_in_4bit") or p.settings.get("load_in_8bit")
        }


# ---------------------------------------------------------------- estimates, order, verdicts
def predict_preset(preset, check: MatrixSteps) -> dict | str:
    """The estimator's prediction for the run the matrix launches (or why there is none). Its verdict is set
    against the capacity later (`set_verdicts`): the estimates are made before the probe has measured it."""
    from experiments import predict

    try:
        folder = check.model_folder(check.model_source(preset), "skeleton")  # same config and tokenizer as the run's
        flags = check.run_flags(folder, "1")
        device = "cpu" if check.dry else "cuda"
        return predict(preset, check.dry, check.work / "runs" / preset.name, 1.0, flags, device=device)
    except Exception as error:  # noqa: BLE001 - recorded as the preset's result
        return f"{type(error).__name__}: {error}"


def set_verdicts(estimates: dict[str, dict | str], capacity_gb: float, context_gb: float) -> None:
    for estimate in estimates.values():
        if isinstance(estimate, dict):
            estimate["fits"] = estimate["total_gb"] + context_gb <= capacity_gb


def simulated_capacity(estimates: dict[str, dict | str]) -> float:
    """Dry run: a capacity midway between the smallest and largest estimate, so that one preset is predicted
    to fit and one not (the tiny twins' estimates are mostly the process's own libraries)."""
    totals = [e["total_gb"] for e in estimates.values() if isinstance(e, dict)]
    return (min(totals) + max(totals)) / 2 if totals else 1.0


def matrix_order(
    presets, estimates: dict[str, dict], capacity_gb: float, context_gb: float = 0.0, reference_gb: float | None = None
) -> list:
    """The verdicts most in doubt first: nearest the capacity, or the reference GPU's, first (the estimate
    plus the CUDA context against it, on either side); a preset whose estimate equals an earlier one's (it
    differs only in the learning rate or in gradient accumulation, which take no memory) after all the others."""
    capacities = [capacity_gb] + ([reference_gb] if reference_gb else [])

    def distance(preset):
        return min(abs(estimates[preset.name]["total_gb"] + context_gb - capacity) for capacity in capacities)

    first, repeats, seen = [], [], set()
    for preset in sorted(presets, key=lambda p: (distance(p), p.name)):
        total = round(estimates[preset.name]["total_gb"], 2)
        (repeats if total in seen else first).append(preset)
        seen.add(total)
    return first + repeats


def _not_run(preset, estimate: dict, status: str, note: str) -> dict:
    from alt_text_recipes.outputs.experiment_matrix import RunResult

    result = RunResult(preset.name, preset.title, status, estimate=estimate, error=note)
    entry = judge(result, preset, 0.0, "")
    entry["note"] = note
    return entry


def _verdict(predicted: str, observed: str) -> str:
    if observed == "fit":
        return "correct" if predicted == "fits" else "WRONG"
    if observed in ("OOM", "over capacity"):
        return "correct" if predicted == "OOM" else "WRONG"
    return "not checked"


def at_reference(entry: dict, capacity_gb: float, reference_gb: float, context_gb: float) -> dict:
    """The same run set against the reference GPU: predicted from the estimate, observed from the measured
    peak (an out-of-memory error here is one there too when the reference is the smaller)."""
    estimate, peak = entry["estimate"], (entry["measured"] or {}).get("peak")
    predicted = ("fits" if estimate["total_gb"] + context_gb <= reference_gb else "OOM") if estimate else "?"
    if entry["status"] == "ok" and peak is not None:
        observed = "fit" if peak + context_gb <= reference_gb else "over capacity"
    elif entry["status"] == "OOM" and reference_gb <= capacity_gb:
        observed = "OOM"
    else:
        observed = entry["observed"] if entry["status"] not in ("ok", "OOM") else "unknown"
    return {
        "capacity_gb": reference_gb,
        "predicted": predicted,
        "observed": observed,
        "verdict": _verdict(predicted, observed),
    }


def judge(
    result, preset, capacity_gb: float, log: str, reference_gb: float | None = None, context_gb: float = 0.0
) -> dict:
    """The run beside its prediction: predicted fits/OOM, observed fit/OOM/over capacity/..., verdict; and the
    same against the reference GPU (`reference`)."""
    estimate = result.estimate
    predicted = ("fits" if estimate.get("fits") else "OOM") if estimate else "?"
    peak = result.measured.get("peak")
    peak_at_oom = None
    if result.status == "OOM":
        observed = "OOM"
        reached = re.search(r"reached ([\d.]+) GB allocated", log)
        peak_at_oom = float(reached.group(1)) if reached else None
    elif result.status == "ok":
        observed = "over capacity" if peak is not None and peak > capacity_gb else "fit"
    else:
        observed = result.status
    entry = {
        **dataclasses.asdict(result),
        "model": preset.settings.get("model_name_or_path", ""),
        "predicted": predicted,
        "observed": observed,
        "verdict": _verdict(predicted, observed),
        "peak_at_oom_gb": peak_at_oom,
        "note": result.error if result.status not in ("ok", "OOM") else "",
    }
    if reference_gb and ran(entry):
        entry["reference"] = at_reference(entry, capacity_gb, reference_gb, context_gb)
    return entry
