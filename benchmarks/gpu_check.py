"""Validate the recipes on one NVIDIA GPU in one command, in at most 8 minutes, and write what was measured.

    python3 benchmarks/gpu_check.py                  # on the GPU machine (`make gpu-check`)
    python benchmarks/gpu_check.py --dry             # the same steps on CPU with the tiny twins (`make gpu-check-dry`)
    python3 benchmarks/gpu_check.py --parts matrix --presets lora qlora \
        --merge benchmarks/results/gpu-<name>/results.json

Steps, in this order (each in its own process, with a time limit, its log kept):

1. matmul probe (`benchmarks/matmul_probe.py`): this GPU's dense bf16 peak, the MFU denominator, and its
   name and memory (the capacity every estimate is checked against).
2. throughput (`benchmarks/throughput.py`): BLIP-2 OPT-2.7B, bf16 full fine-tuning, batch 16, random weights
   from the shipped config; our recipe against the plain loop: samples/s, peak memory, MFU against step 1.
3. `accelerate launch --num_processes 1` through `accelerate_configs/fsdp4.yaml` and
   `accelerate_configs/ds_zero2_offload.yaml`, on OPT-2.7B at real width with 2 layers per stack (quick).
4. the technique matrix: every preset in recipes/configs/matrix through the command a user types
   (`recipes/experiments.py`'s run_preset) on its real model with random weights, beside the estimator's
   prediction for this GPU. Presets predicted to fit run 2 optimizer steps: measured breakdown and peak
   beside the estimate. Presets predicted not to fit run 1 step, expecting an out-of-memory error; one that
   runs instead is a wrong verdict. The weights of a real model are drawn on the GPU at load time
   (`random_weights` skeletons: nothing written to disk) except for the quantized (QLoRA) preset, whose
   weights folder is drawn on the GPU and written in the background while the launches run (the matrix
   waits for it, so no preset shares the GPU with it). A preset whose host-memory
   estimate exceeds this machine's RAM (DeepSpeed CPU offload of Flan-T5-XXL: ~200 GB) is not run and says
   so. Order: the verdicts most in doubt first, i.e. the estimates nearest the capacity, on either side
   (a preset whose estimate repeats an earlier one's goes last); the matrix gets the time the other steps
   leave, and a preset that no
   longer fits in the budget is listed as not run, with the command that runs the rest (--merge).
5. `python -m pytest -m gpu tests` (time is kept for it).

Writes benchmarks/results/gpu-<gpu name>/: results.md, results.json, memory.png (draw_chart),
commands.sh (every command, exactly as run), throughput.json/.md, probe.json and logs.tar.gz.
--merge folds an earlier results.json in (what this call did not run is kept from it).

--dry runs every step on CPU with the tiny twins (data/models/tiny-*), as skeletons and weights folders
like the real ones, one step each at batch 4, the probe on small CPU products, and two presets: `baseline`
(a skeleton) and `qlora` (the weights-folder path), against a simulated capacity midway between their
estimates; results go to benchmarks/results/gpu-dry-cpu/ (or --out). A CPU cannot run out of memory like a GPU, so
there a run whose peak passes the simulated capacity counts as "over capacity". With no GPU to share, the dry run
takes two lanes at once (throughput then pytest; launches then the matrix): about 1.5 to 2.5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from alt_text_recipes.breakdown import MemoryParts  # no heavy imports: the package's torch-free corner
from alt_text_recipes.registry import MEASURED_RUN_FLAGS

REPO_ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PARTS = ("throughput", "launch", "matrix", "pytest")  # the probe always runs: the others need its figures
DRY_PRESETS = ("baseline", "qlora")
# Dry run: a small batch (4-bit matrix products at batch 64 take seconds on a CPU); the plumbing is the same.
DRY_RECIPE_FLAGS = ["--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1"]
BUDGET_S = 450  # 8 minutes less what starting, the last step's overrun and writing the results take
# Seconds each step may take at most (GPU); the matrix takes what is left, less the pytest reserve.
LIMITS = {"probe": 120, "throughput": 240, "launch": 150, "preset": 180, "pytest": 150, "weights": 600}
DRY_LIMITS = {name: 600 for name in LIMITS}
PYTEST_RESERVE_S = 90
MIN_STEP_S = 30  # a step is not started with less than this left
THROUGHPUT = {
    "gpu": [
        "--config",
        "recipes/configs/throughput/opt27b_bf16_full.yaml",
        "--model_config",
        "data/model_configs/blip2-opt-2.7b",
        "--images",
        "192",
        "--steps",
        "8",
        "--warmup_steps",
        "3",
    ],
    "dry": [
        "--config",
        "recipes/configs/tiny/full_ft.yaml",
        "--model_config",
        "data/models/tiny-blip2-opt",
        "--images",
        "8",
        "--steps",
        "1",
        "--warmup_steps",
        "1",
        "--batch_size",
        "4",
        "--workers",
        "1",
    ],
}
LAUNCH_MODEL = {"gpu": "blip2-opt-2.7b", "dry": "data/models/tiny-blip2-opt"}
LAUNCH_LAYERS = 2
LAUNCHES = (
    ("fsdp4", "accelerate_configs/fsdp4.yaml", "recipes/configs/multi_gpu/fsdp4_bf16.yaml"),
    ("ds_zero2_offload", "accelerate_configs/ds_zero2_offload.yaml", "recipes/configs/matrix/cpu_offload.yaml"),
)
LAUNCH_FLAGS = [
    *"--max_steps 2 --per_device_train_batch_size 4 --gradient_accumulation_steps 1 --max_train_samples 64".split(),
    *MEASURED_RUN_FLAGS,
    *"--save_strategy no --disable_tqdm true".split(),
]
PACKAGES = ("torch", "transformers", "accelerate", "peft", "trl", "datasets", "bitsandbytes", "deepspeed")
GB = 1024**3


# ---------------------------------------------------------------- time
class Clock:
    """The budget: elapsed time, what is left, each step's duration (printed as it goes)."""

    def __init__(self, budget: float):
        self.start, self.budget, self.steps = time.perf_counter(), budget, []

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget - self.elapsed()

    def limit(self, cap: float, reserve: float = 0.0) -> float:
        """Seconds a step may take: its cap, or what is left of the budget less `reserve`."""
        return min(cap, self.left() - reserve)

    @contextmanager
    def step(self, name: str):
        started = self.elapsed()
        print(f"\n[gpu-check {started:5.0f} s] {name} ...", flush=True)
        try:
            yield
        finally:
            seconds = self.elapsed() - started
            self.steps.append({"step": name, "started_s": round(started, 1), "seconds": round(seconds, 1)})
            print(f"[gpu-check {self.elapsed():5.0f} s] {name}: {seconds:.0f} s", flush=True)


# ---------------------------------------------------------------- the check
class Check:
    def __init__(self, args: argparse.Namespace):
        self.args, self.dry = args, args.dry
        self.limits = DRY_LIMITS if args.dry else LIMITS
        self.clock = Clock(args.budget)
        self.work = Path(args.work_dir)
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.commands: list[dict] = []

    # -- commands
    def printable(self, command: list[str]) -> str:
        text = shlex.join(str(part) for part in command).replace(str(REPO_ROOT) + "/", "")
        return text.replace(shlex.quote(sys.executable), '"$PYTHON"', 1) if command[0] == sys.executable else text

    def record(self, step: str, command: list[str] | str) -> str:
        text = command.replace(str(REPO_ROOT) + "/", "") if isinstance(command, str) else self.printable(command)
        self.commands.append({"step": step, "command": text})
        return text

    def run(self, step: str, command: list[str], timeout: float, log_name: str) -> tuple[int | None, str, float]:
        """Run a command (recorded, logged); (exit status or None on timeout, output, seconds)."""
        from alt_text_recipes.experiments import run_command

        print(f"$ {self.record(step, command)}", flush=True)
        started = time.perf_counter()
        returncode, output = run_command(command, timeout)
        (self.logs / log_name).write_text(output)
        return returncode, output, time.perf_counter() - started

    # -- 1. probe
    def probe(self) -> dict:
        with self.clock.step("matmul probe"):
            out = self.work / "probe.json"
            command = [sys.executable, str(REPO_ROOT / "benchmarks/matmul_probe.py"), "--out", str(out)]
            if self.dry:
                command += ["--device", "cpu"]
            returncode, output, _ = self.run("probe", command, self.limits["probe"], "probe.log")
            if returncode != 0:
                tail = "\n".join(output.strip().splitlines()[-15:])
                sys.exit(
                    "gpu-check: the matmul probe failed "
                    f"({'timeout' if returncode is None else f'exit {returncode}'}):"
                    f"\n{tail}\nIs a CUDA GPU visible (nvidia-smi)? Without one, run with --dry."
                )
            probe = json.loads(out.read_text())
            if not self.dry and probe.get("cuda") is None:
                sys.exit("gpu-check: torch sees no CUDA GPU here; run with --dry for the CPU rehearsal.")
            print(
                f"{probe['device']}: dense bf16 {probe['bf16_tflops']:.4g} TFLOP/s, "
                f"{probe['total_memory_bytes'] / GB:.1f} GB",
                flush=True,
            )
        return probe

    # -- models
    def model_source(self, preset) -> str:
        from alt_text_recipes.experiments import tiny_model_for

        name = preset.settings["model_name_or_path"]
        return str(REPO_ROOT / tiny_model_for(name)) if self.dry else name.split("/")[-1]

    def model_folder(self, source: str, kind: str) -> Path:
        return self.work / "models" / f"{Path(source).name}-{kind}"

    def skeleton(self, source: str) -> Path:
        from alt_text_recipes.random_weights import build_random_model

        folder = self.model_folder(source, "skeleton")
        self.record(
            "matrix: a skeleton (config and processor; the recipe draws the weights on the GPU)",
            'PYTHONPATH=recipes:$PYTHONPATH "$PYTHON" -c '
            f"'from alt_text_recipes.random_weights import build_random_model; "
            f'build_random_model("{source}", "{folder}", weights=False)\'',
        )
        return build_random_model(source, folder, weights=False)

    def start_weights_build(self, source: str) -> tuple[subprocess.Popen, Path, Path]:
        """Write `source`'s weights folder in the background, while the launches run: drawn on the GPU (seconds;
        on a CPU, drawing 12B random numbers takes minutes), then saved; `finish_weights_builds` waits for it
        before the matrix, so no preset shares the GPU with it."""
        folder = self.model_folder(source, "weights")
        command = [
            sys.executable,
            __file__,
            "--build_model",
            source,
            str(folder),
            "--device",
            "cpu" if self.dry else "cuda",
        ]
        self.record("matrix: weights folder for the quantized preset", command)
        log = self.logs / f"build-{Path(source).name}.log"
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True
        )
        print(f"writing {folder} in the background (log {log})", flush=True)
        return process, folder, log

    # -- 2. throughput
    def throughput(self, out_dir: Path, probe_json: Path) -> dict:
        limit = self.clock.limit(self.limits["throughput"])
        if limit < MIN_STEP_S:
            return {"status": "not run", "reason": "time budget"}
        with self.clock.step("throughput"):
            out = out_dir / "throughput.json"
            command = [
                sys.executable,
                str(REPO_ROOT / "benchmarks/throughput.py"),
                *THROUGHPUT["dry" if self.dry else "gpu"],
                "--peak_json",
                str(probe_json),
                "--out",
                str(out),
            ]
            returncode, output, seconds = self.run("throughput", command, limit, "throughput.log")
        if returncode != 0 or not out.exists():
            return {
                "status": "timeout" if returncode is None else "failed",
                "seconds": seconds,
                "error": _last_line(output),
            }
        result = json.loads(out.read_text())
        return {"status": "ok", "seconds": seconds, "json": out.name, **_throughput_summary(result)}

    # -- 3. accelerate launches
    def build_launch_model(self) -> None:
        """The launches' model: real width, 2 layers per stack, weights written by this process on the CPU (it
        must hold no CUDA context), before the estimator's thread starts (model construction is not
        thread-safe: transformers switches weight initialisation off process-wide while it builds a model)."""
        from alt_text_recipes.random_weights import build_random_model

        source = str(REPO_ROOT / LAUNCH_MODEL["dry"]) if self.dry else LAUNCH_MODEL["gpu"]
        folder = self.model_folder(source, f"{LAUNCH_LAYERS}layers")
        with self.clock.step("launch model (2 layers per stack, random weights)"):
            self.record(
                "launch: the model",
                f'PYTHONPATH=recipes:$PYTHONPATH "$PYTHON" -c \'from alt_text_recipes.random_weights import '
                f'build_random_model; build_random_model("{source}", "{folder}", layers={LAUNCH_LAYERS}, '
                f'device="cpu")\'',
            )
            self.launch_folder = build_random_model(source, folder, layers=LAUNCH_LAYERS, device="cpu")

    def launches(self) -> list[dict]:
        from alt_text_recipes.experiments import cpu_deepspeed_flags, read_measurements

        results = []
        folder = self.launch_folder
        for name, accelerate_config, preset in LAUNCHES:
            entry = {"name": name, "accelerate_config": accelerate_config, "preset": preset}
            limit = self.clock.limit(self.limits["launch"])
            if limit < MIN_STEP_S:
                results.append({**entry, "status": "not run", "reason": "time budget"})
                continue
            with self.clock.step(f"accelerate launch: {name}"):
                output_dir = self.work / "runs" / f"launch_{name}"
                shutil.rmtree(output_dir, ignore_errors=True)
                launcher = [
                    sys.executable,
                    "-m",
                    "accelerate.commands.launch",
                    "--config_file",
                    str(REPO_ROOT / accelerate_config),
                    "--num_processes",
                    "1",
                ]
                if self.dry:  # CPU: DeepSpeed's GPU-sized buckets cost seconds per step
                    launcher += cpu_deepspeed_flags(accelerate_config, output_dir)
                command = [
                    *launcher,
                    str(REPO_ROOT / "recipes/full_ft.py"),
                    "--config",
                    str(REPO_ROOT / preset),
                    "--model_name_or_path",
                    str(folder),
                    "--output_dir",
                    str(output_dir),
                    *LAUNCH_FLAGS,
                ]
                returncode, output, seconds = self.run(f"launch: {name}", command, limit, f"launch_{name}.log")
            measured, train_seconds, _, loss = read_measurements(output_dir)
            strategy = re.search(r"^strategy: (.+)$", output, re.MULTILINE)
            status = "ok" if returncode == 0 else "timeout" if returncode is None else "failed"
            results.append(
                {
                    **entry,
                    "status": status,
                    "seconds": round(seconds, 1),
                    "train_seconds": train_seconds,
                    "strategy": strategy.group(1) if strategy else None,
                    "peak_gb": measured.get("peak"),
                    "final_loss": loss,
                    "model_saved": any(output_dir.glob("*.safetensors")),
                    "error": "" if status == "ok" else _last_line(output),
                }
            )
            print(
                f"--> {status} in {seconds:.0f} s | {results[-1]['strategy']} | peak {measured.get('peak')} GB",
                flush=True,
            )
        return results

    # -- 4. matrix
    def matrix(
        self, presets, done: dict[str, dict | str], capacity_gb: float, host_gb: float, builds: dict, reserve: float
    ) -> list[dict]:
        """Each preset beside its estimate (`done`: the estimate, or why there is none)."""
        from experiments import run_preset

        from alt_text_recipes.estimator import CUDA_CONTEXT_GB

        failed = {name: value for name, value in done.items() if isinstance(value, str)}
        predicted = {name: value for name, value in done.items() if not isinstance(value, str)}
        entries = []
        for preset in [p for p in presets if p.name in failed]:
            entries.append(_not_run(preset, {}, "failed", f"no estimate: {failed[preset.name]}"))
        weights_errors = self.finish_weights_builds(builds, reserve)
        context_gb = 0.0 if self.dry else CUDA_CONTEXT_GB
        for preset in matrix_order([p for p in presets if p.name in predicted], predicted, capacity_gb, context_gb):
            estimate = predicted[preset.name]
            source = self.model_source(preset)
            fits = estimate["fits"]
            runs_dir = self.work
            if not self.dry and estimate["host_gb"] > 0.9 * host_gb:
                entries.append(
                    _not_run(
                        preset,
                        estimate,
                        "not run",
                        f"needs {estimate['host_gb']:.0f} GB of host memory (estimate); this machine "
                        f"has {host_gb:.0f} GB",
                    )
                )
                continue
            limit = self.clock.limit(self.limits["preset"], reserve)
            if limit < MIN_STEP_S:
                entries.append(_not_run(preset, estimate, "not run", "time budget"))
                continue
            with self.clock.step(f"matrix: {preset.name}"):
                folder = self.model_folder(source, "skeleton")
                if preset.name in self.quantized:
                    error = weights_errors.get(source, "its weights folder was not started")
                    if error:
                        entries.append(_not_run(preset, estimate, "not run" if "budget" in error else "failed", error))
                        continue
                    folder = self.model_folder(source, "weights")
                steps = "1" if self.dry or not fits else "2"
                flags = self.run_flags(folder, steps)
                shutil.rmtree(runs_dir / "runs" / preset.name, ignore_errors=True)  # no earlier call's measurements
                result = run_preset(
                    preset,
                    self.dry,
                    runs_dir,
                    limit,
                    capacity_gb,
                    flags,
                    prediction=estimate,
                    device="cpu" if self.dry else "cuda",
                )
                self.record(f"matrix: {preset.name}", result.command.replace(sys.executable, '"$PYTHON"', 1))
                log = (runs_dir / "logs" / f"{preset.name}.log").read_text()
            entries.append(judge(result, preset, capacity_gb, log))
        return entries

    def run_flags(self, folder: Path, steps: str) -> list[str]:
        flags = [
            "--model_name_or_path",
            str(folder),
            "--max_steps",
            steps,
            "--logging_steps",
            "1",
            "--memory_report_steps",
            "1",
            "--save_final_model",
            "false",
            "--report_to",
            "none",
            "--disable_tqdm",
            "true",
            "--show_examples",
            "0",
            "--eval_strategy",
            "no",
        ]
        return flags + (DRY_RECIPE_FLAGS if self.dry else [])

    def finish_weights_builds(self, builds: dict, reserve: float) -> dict[str, str]:
        """Wait for the weights folders being written (they may hold GPU memory); source -> why not, or ""."""
        errors = {}
        for source, (process, _, log) in builds.items():
            if process.poll() is None:
                with self.clock.step(f"matrix: waiting for the weights of {Path(source).name}"):
                    try:
                        process.wait(timeout=max(self.clock.limit(self.limits["weights"], reserve), 1))
                    except subprocess.TimeoutExpired:
                        os.killpg(process.pid, signal.SIGKILL)
                        process.wait()
                        errors[source] = "time budget: its weights folder was not written in time"
                        continue
            if process.returncode != 0 and source not in errors:
                errors[source] = f"writing its weights folder failed: {_last_line(log.read_text())}"
            errors.setdefault(source, "")
        return errors

    # -- 5. pytest
    def pytest(self) -> dict:
        limit = self.clock.limit(self.limits["pytest"])
        if limit < MIN_STEP_S:
            return {"status": "not run", "reason": "time budget"}
        with self.clock.step("pytest -m gpu"):
            # `-m gpu` without a GPU is a usage error (tests/conftest.py); the dry run collects the GPU tests,
            # which are then deselected and counted, and ends in exit 5 (no test ran)
            selection = ["tests/test_gpu.py", "tests/test_real_width.py"] if self.dry else ["-m", "gpu", "tests"]
            command = [sys.executable, "-m", "pytest", *selection, "-q", "-p", "no:cacheprovider"]
            if self.dry:
                command += ["-k", "gpu"]
            returncode, output, seconds = self.run("pytest", command, limit, "pytest.log")
        summary = next(
            (
                line.strip("= ")
                for line in reversed(output.strip().splitlines())
                if re.search(r"passed|failed|error|no tests ran|deselected|skipped", line)
            ),
            _last_line(output),
        )
        meaning = {
            0: "passed",
            1: "some tests failed",
            2: "interrupted (collection errors?)",
            5: "no test marked gpu ran",
            None: "timeout",
        }.get(returncode, f"exit {returncode}")
        print(f"--> {meaning}: {summary}", flush=True)
        return {
            "status": "ok" if returncode in (0, 5) else "failed",
            "returncode": returncode,
            "meaning": meaning,
            "summary": summary,
            "seconds": round(seconds, 1),
        }

    @property
    def quantized(self) -> set[str]:
        return self._quantized

    def set_presets(self, presets) -> None:
        self._quantized = {
            p.name
            for p in presets
            if p.recipe == "qlora" or p.settings.get("load_in_4bit") or p.settings.get("load_in_8bit")
        }


# ---------------------------------------------------------------- verdicts and tables
def matrix_order(presets, estimates: dict[str, dict], capacity_gb: float, context_gb: float = 0.0) -> list:
    """The verdicts most in doubt first: nearest the capacity first (the estimate plus the CUDA context
    against it, on either side); a preset whose estimate equals an earlier one's (it differs only in the
    learning rate or in gradient accumulation, which take no memory) after all the others."""

    def distance(preset):
        return abs(estimates[preset.name]["total_gb"] + context_gb - capacity_gb)

    first, repeats, seen = [], [], set()
    for preset in sorted(presets, key=lambda p: (distance(p), p.name)):
        total = round(estimates[preset.name]["total_gb"], 2)
        (repeats if total in seen else first).append(preset)
        seen.add(total)
    return first + repeats


def _not_run(preset, estimate: dict, status: str, note: str) -> dict:
    from alt_text_recipes.experiments import RunResult

    result = RunResult(preset.name, preset.title, status, estimate=estimate, error=note)
    entry = judge(result, preset, 0.0, "")
    entry["note"] = note
    return entry


def judge(result, preset, capacity_gb: float, log: str) -> dict:
    """The run beside its prediction: predicted fits/OOM, observed fit/OOM/over capacity/..., verdict."""
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
    if observed == "fit":
        verdict = "correct" if predicted == "fits" else "WRONG"
    elif observed in ("OOM", "over capacity"):
        verdict = "correct" if predicted == "OOM" else "WRONG"
    else:
        verdict = "not checked"
    note = result.error if result.status not in ("ok", "OOM") else ""
    return {
        **dataclasses.asdict(result),
        "model": preset.settings.get("model_name_or_path", ""),
        "predicted": predicted,
        "observed": observed,
        "verdict": verdict,
        "peak_at_oom_gb": peak_at_oom,
        "note": note,
    }


def _run_results(entries: list[dict]):
    from alt_text_recipes.experiments import RunResult

    names = {f.name for f in dataclasses.fields(RunResult)}
    return [RunResult(**{key: value for key, value in entry.items() if key in names}) for entry in entries]


def _gb(value) -> str:
    return "" if value is None else f"{value:.2f}"


def matrix_table(entries: list[dict], dry: bool = False) -> str:
    lines = [
        "| preset | model | predicted | observed | verdict | estimate total | measured peak | measured ÷ estimate | "
        + " | ".join(f"{part} m / e" for part in MemoryParts.names())
        + " | note |",
        "|" + "---|" * (9 + len(MemoryParts.names())),
    ]
    for entry in entries:
        m, e = entry["measured"], entry["estimate"]
        peak = m.get("peak") if m else entry.get("peak_at_oom_gb")
        peak_text = _gb(peak) + (" at OOM" if not m and peak is not None else "")
        ratio = f"{peak / e['total_gb']:.2f}" if peak and e.get("total_gb") else ""

        def pair(part, m=m, e=e):
            return f"{_gb(m.get(part))} / {_gb(e.get(f'{part}_gb'))}" if m else f"– / {_gb(e.get(f'{part}_gb'))}"

        model = ("twin of " if dry else "") + entry["model"].split("/")[-1]
        lines.append(
            f"| {entry['preset']} | {model} | {entry['predicted']} | {entry['observed']} "
            f"| {entry['verdict']} | {_gb(e.get('total_gb'))} | {peak_text} | {ratio} | "
            + " | ".join(pair(part) for part in MemoryParts.names())
            + f" | {entry.get('note', '')[:160]} |"
        )
    return "\n".join(lines)


def _throughput_summary(result: dict) -> dict:
    training = result["training"]
    return {
        "device": result["device"],
        "model": result["model"],
        "config": result["config"],
        "batch_size": result["batch_size"],
        "steps": result["steps"],
        "peak_tflops": result.get("peak_tflops"),
        "peak_source": result.get("peak_source"),
        "train_speedup": result["train_speedup"],
        "input_pipeline_speedup": result["input_pipeline_speedup"],
        "peak_memory_ratio": result["peak_memory_ratio"],
        "loops": {
            name: {
                "samples_per_s": run["samples_per_s"],
                "steps_per_s": run["steps_per_s"],
                "peak_gb": run["peak_bytes"] / GB,
                "peak_source": run["peak_source"],
                "model_tflops_per_s": run["model_tflops_per_s"],
                "mfu": run.get("mfu"),
            }
            for name, run in training.items()
        },
    }


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def render(report: dict) -> str:
    from alt_text_recipes.experiments import markdown_table

    probe = report["probe"]
    lines = [
        f"# GPU check: {report['gpu']}" + (": tiny twins, simulated capacity" if report["dry"] else ""),
        "",
        f"{report['date']} | {report['seconds']:.0f} s"
        + (" (no time budget)" if report["dry"] else f" of a {report['budget_s']:.0f} s budget")
        + f" | capacity {report['capacity_gb']:.2f} GB{' (simulated)' if report['dry'] else ''}"
        + f" | host {report['host_memory_gb']:.0f} GB | "
        + ", ".join(f"{name} {version}" for name, version in report["versions"].items()),
        "",
        "## Matmul probe (the MFU denominator)",
        "",
        f"Dense bf16 matrix product: **{probe['bf16_tflops']:.4g} TFLOP/s** (best of sizes "
        + ", ".join(f"{size}: {value:.4g}" for size, value in probe["bf16_by_size"].items())
        + f"); fp32 {probe['fp32_tflops']:.4g} TFLOP/s. "
        + f"{probe['device']}, torch {probe['torch']}, CUDA {probe['cuda']}.",
        "",
        "## Technique matrix: estimate vs measured",
        "",
    ]
    entries = report.get("matrix", [])
    if entries:
        counts = {
            verdict: sum(e["verdict"] == verdict for e in entries) for verdict in ("correct", "WRONG", "not checked")
        }
        lines += [
            f"Verdicts: {counts['correct']} correct, {counts['WRONG']} wrong, {counts['not checked']} not checked. "
            "GB; m / e = measured / estimated (measured: the run's last memory report; peak = the GPU "
            "allocator's maximum, or what the out-of-memory message reported). "
            + (
                "Dry run: one step each; a CPU has no allocator limit, so 'over capacity' means the process's "
                "peak RSS passed the simulated capacity, and as the tiny twins' memory is mostly the Python "
                "process, these verdicts test the plumbing, not the estimator."
                if report["dry"]
                else "Predicted-to-fit presets ran 2 optimizer steps, the others 1."
            ),
            "",
            matrix_table(entries, report["dry"]),
            "",
            "Full measurements:",
            "",
            markdown_table(_run_results(entries), "cpu" if report["dry"] else "cuda"),
            "",
            "![measured memory vs estimate](memory.png)",
            "",
        ]
        late = [e["preset"] for e in entries if e["status"] == "not run" and "time budget" in e.get("note", "")]
        if late:
            lines[-1:-1] = [
                f"Not reached in the time budget: {', '.join(late)}. Run them (and fold them in) with "
                f"`python3 benchmarks/gpu_check.py --parts matrix --presets {' '.join(late)} --budget 240 "
                f"--merge {report['work_dir']}/results.json` on the same machine while it is warm, or "
                f"later with `--merge` of this folder's results.json.",
                "",
            ]
    else:
        lines += ["not run", ""]
    lines += ["## Throughput: ours vs the plain loop", ""]
    throughput = report.get("throughput", {})
    if throughput.get("status") == "ok":
        lines += [
            f"{throughput['model']} ({throughput['config']}), batch {throughput['batch_size']}, "
            f"{throughput['steps']} timed steps; MFU against {throughput['peak_tflops'] or 0:.4g} TFLOP/s "
            f"({throughput['peak_source']}). Full table: throughput.md.",
            "",
            "| loop | steps/s | samples/s | peak memory GB | model TFLOP/s | MFU |",
            "|---|---|---|---|---|---|",
        ]
        for name, loop in throughput["loops"].items():
            mfu = f"{100 * loop['mfu']:.1f}%" if loop.get("mfu") is not None else "n/a"
            lines.append(
                f"| {name} | {loop['steps_per_s']:.2f} | {loop['samples_per_s']:.1f} | {loop['peak_gb']:.2f} "
                f"| {loop['model_tflops_per_s']:.3g} | {mfu} |"
            )
        lines += [
            "",
            f"train_speedup (ours ÷ plain samples/s) = {throughput['train_speedup']:.2f}×, peak memory ours ÷ "
            f"plain = {throughput['peak_memory_ratio']:.2f}, input pipeline (cached epoch) "
            f"{throughput['input_pipeline_speedup']:.2f}×",
            "",
        ]
    else:
        lines += [
            f"{throughput.get('status', 'not run')}: {throughput.get('error') or throughput.get('reason', '')}",
            "",
        ]
    lines += [
        "## accelerate launch, one process",
        "",
        "| accelerate config | recipe preset | outcome | strategy accelerate used | train s | peak GB | final loss "
        "| model saved | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for launch in report.get("launches", []):
        lines.append(
            f"| {launch['accelerate_config']} | {launch['preset']} | {launch['status']} "
            f"| {launch.get('strategy') or ''} "
            f"| {_gb(launch.get('train_seconds'))} | {_gb(launch.get('peak_gb'))} | {_gb(launch.get('final_loss'))} "
            f"| {launch.get('model_saved', '')} | {launch.get('error') or launch.get('reason', '')} |"
        )
    pytest = report.get("pytest", {})
    lines += [
        "",
        "## pytest -m gpu",
        "",
        f"{pytest.get('meaning', pytest.get('status', 'not run'))}: {pytest.get('summary', pytest.get('reason', ''))}"
        + (f" (exit {pytest['returncode']}, {pytest['seconds']:.0f} s)" if "returncode" in pytest else ""),
        "",
        "## Time per step",
        "",
        "| step | started at s | seconds |",
        "|---|---|---|",
    ]
    lines += [
        f"| {step['step']} | {step['started_s']:.0f} | {step['seconds']:.0f} |"
        for step in sorted(report["steps"], key=lambda step: step["started_s"])
    ]
    lines += [
        "",
        "## Commands",
        "",
        "Exactly as run (`commands.sh`; `$PYTHON` is "
        f"`{report['python']}`, paths under `{report['work_dir']}` are this run's scratch folder):",
        "",
        "```bash",
    ]
    lines += [f"# {command['step']}\n{command['command']}" for command in report["commands"]]
    lines += ["```", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- main
def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


def merge(previous: dict, report: dict, parts: set[str]) -> dict:
    """`report` over `previous`: the parts not run now, and presets not run now, are kept from `previous`."""
    merged = {**previous, **{key: value for key, value in report.items() if key not in ("matrix", *PARTS_KEYS)}}
    for part, key in zip(PARTS, PARTS_KEYS, strict=True):
        merged[key] = report[key] if part in parts or key not in previous else previous[key]
    old = {entry["preset"]: entry for entry in previous.get("matrix", [])}
    for entry in report.get("matrix", []):
        if entry["status"] != "not run" or entry["preset"] not in old:
            old[entry["preset"]] = entry
    merged["matrix"] = list(old.values())
    merged["steps"] = previous.get("steps", []) + report["steps"]
    merged["commands"] = previous.get("commands", []) + report["commands"]
    return merged


PARTS_KEYS = ("throughput", "launches", "matrix", "pytest")


def write_results(report: dict, out_dir: Path, work: Path) -> None:
    from alt_text_recipes.experiments import draw_chart

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out_dir / "results.md").write_text(render(report))
    script = [
        "#!/bin/sh",
        f"# gpu-check on {report['gpu']}, {report['date']}: every command, in order, as run.",
        f"PYTHON={shlex.quote(report['python'])}",
        "",
    ]
    script += [f"# {command['step']}\n{command['command']}" for command in report["commands"]]
    (out_dir / "commands.sh").write_text("\n".join(script) + "\n")
    if report.get("matrix"):
        capacity = report["capacity_gb"]
        title = (
            "Dry run (tiny twins, CPU): measured memory vs estimate"
            if report["dry"]
            else f"{report['gpu']}: measured memory vs estimate"
        )
        draw_chart(_run_results(report["matrix"]), out_dir / "memory.png", round(capacity, 2), title)
    with tarfile.open(out_dir / "logs.tar.gz", "w:gz") as archive:
        archive.add(work / "logs", arcname="logs")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry", action="store_true", help="the same steps on CPU with the tiny twins")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="the steps to run besides the probe (default: all)",
    )
    parser.add_argument("--presets", nargs="+", help="matrix presets (default: all; --dry: baseline qlora)")
    parser.add_argument(
        "--budget", type=float, default=None, help=f"seconds for the whole check (default {BUDGET_S}; --dry: no limit)"
    )
    parser.add_argument("--out", type=Path, help="results folder (default benchmarks/results/gpu-<gpu name>)")
    parser.add_argument("--work_dir", default=None, help="scratch: models, runs, logs (default /tmp/gpu-check[-dry])")
    parser.add_argument(
        "--capacity_gb",
        type=float,
        default=None,
        help="GPU memory to check estimates against (default: the probe's; --dry: simulated, midway "
        "between the presets' estimates)",
    )
    parser.add_argument(
        "--merge", type=Path, help="an earlier results.json to fold in (what this call does not run is kept)"
    )
    # internal: write a random-weights folder (run in the background by the check)
    parser.add_argument("--build_model", nargs=2, metavar=("SOURCE", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.budget is None:
        args.budget = 1e9 if args.dry else BUDGET_S
    args.work_dir = args.work_dir or f"/tmp/gpu-check{'-dry' if args.dry else ''}"
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if args.build_model:
        from alt_text_recipes.random_weights import build_random_model

        source, folder = args.build_model
        started = time.perf_counter()
        build_random_model(source, folder, weights=True, device=args.device)
        print(f"wrote {folder} in {time.perf_counter() - started:.0f} s", flush=True)
        return
    check = Check(args)
    parts = set(args.parts)
    from alt_text_recipes.experiments import all_presets, load_preset

    presets = [load_preset(name) for name in (args.presets or (DRY_PRESETS if args.dry else ()))] or all_presets()
    if "matrix" not in parts:
        presets = []
    check.set_presets(presets)
    print(
        f"gpu-check{' --dry' if args.dry else ''}: budget {args.budget:.0f} s, parts {', '.join(sorted(parts))}, "
        f"{len(presets)} presets, scratch {check.work}",
        flush=True,
    )

    # 1. the probe on the GPU while this process writes the skeletons and the launches' model (on the CPU: no
    # CUDA context here). One thread builds models at a time: model construction is not thread-safe.
    def models():
        for source in sorted({check.model_source(p) for p in presets}):
            check.skeleton(source)
        if "launch" in parts:
            check.build_launch_model()

    with ThreadPoolExecutor(max_workers=1) as background:
        built = background.submit(models)
        probe = check.probe()
        built.result()
    capacity_gb = args.capacity_gb or (None if args.dry else probe["total_memory_bytes"] / GB)
    host_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB
    name = "dry-cpu" if args.dry else slug(probe["device"])
    out_dir = args.out or REPO_ROOT / "benchmarks" / "results" / f"gpu-{name}"
    out_dir.mkdir(parents=True, exist_ok=True)
    probe_json = out_dir / "probe.json"
    probe_json.write_text(json.dumps(probe, indent=2) + "\n")

    # Estimates for every preset, made in this process while the GPU runs the next steps (no model is built
    # in this process from now on); on the GPU after the throughput, whose input pipeline wants the CPU.
    estimator = ThreadPoolExecutor(max_workers=1)
    estimates = {}

    def start_estimates():
        estimates.update({p.name: estimator.submit(_predict, p, args.dry, check, capacity_gb or 1.0) for p in presets})

    report = {
        "gpu": "CPU (dry run)" if args.dry else probe["device"],
        "dry": args.dry,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "budget_s": args.budget,
        "capacity_gb": capacity_gb,
        "host_memory_gb": host_gb,
        "versions": versions(),
        "probe": probe,
        "python": sys.executable,
        "work_dir": str(check.work),
        "command": "python " + shlex.join([Path(__file__).relative_to(REPO_ROOT).as_posix(), *argv]),
    }
    builds = {}

    def throughput_then_pytest():
        if "throughput" in parts:
            report["throughput"] = check.throughput(out_dir, probe_json)
        if args.dry and "pytest" in parts:
            report["pytest"] = check.pytest()

    def launches_then_matrix():
        if not args.dry:  # on the GPU, one step after the other
            throughput_then_pytest()
            start_estimates()
        for source in sorted({check.model_source(p) for p in presets if p.name in check.quantized}):
            builds[source] = check.start_weights_build(source)
        if "launch" in parts:
            report["launches"] = check.launches()
        if "matrix" in parts:
            done = {name: future.result() for name, future in estimates.items()}
            capacity = capacity_gb or simulated_capacity(done)
            report["capacity_gb"] = capacity
            reserve = PYTEST_RESERVE_S if "pytest" in parts and not args.dry else 0
            report["matrix"] = check.matrix(presets, done, capacity, host_gb, builds, reserve)
        if not args.dry and "pytest" in parts:
            report["pytest"] = check.pytest()

    if args.dry:  # a CPU has no GPU to share: two lanes at once halve the rehearsal's time on two cores
        start_estimates()
        with ThreadPoolExecutor(max_workers=2) as lanes:
            for lane in [lanes.submit(throughput_then_pytest), lanes.submit(launches_then_matrix)]:
                lane.result()
    else:  # one GPU: one step at a time
        launches_then_matrix()
    estimator.shutdown()
    for process, _, _ in builds.values():
        if process.poll() is None:
            process.kill()
    report.update({key: report.get(key, {} if key in ("throughput", "pytest") else []) for key in PARTS_KEYS})
    report["capacity_gb"] = report["capacity_gb"] or 0.0
    report["steps"], report["commands"] = check.clock.steps, check.commands
    report["seconds"] = check.clock.elapsed()
    if args.merge:
        if args.merge.exists():
            report = merge(json.loads(args.merge.read_text()), report, parts)
        else:
            print(f"--merge {args.merge}: no such file; writing this call's results alone", flush=True)
    write_results(report, out_dir, check.work)
    shutil.copy(out_dir / "results.json", check.work / "results.json")  # for a --merge by a later call here
    print(
        f"\n{render(report)}\nwrote {out_dir}/ (results.md, results.json, memory.png, commands.sh, throughput.json, "
        f"probe.json, logs.tar.gz) in {check.clock.elapsed():.0f} s",
        flush=True,
    )


def simulated_capacity(estimates: dict[str, dict | str]) -> float:
    """Dry run: a capacity midway between the smallest and largest estimate, so that one preset is predicted
    to fit and one not (the tiny twins' estimates are mostly the process's own libraries); their verdicts
    are set against it."""
    totals = [e["total_gb"] for e in estimates.values() if isinstance(e, dict)]
    if not totals:
        return 1.0
    capacity = (min(totals) + max(totals)) / 2
    for estimate in estimates.values():
        if isinstance(estimate, dict):
            estimate["fits"] = estimate["total_gb"] <= capacity  # a CPU run: no CUDA context to add
    return capacity


def _predict(preset, dry: bool, check: Check, capacity_gb: float) -> dict | str:
    """The estimator's prediction for the run the matrix launches (or why there is none)."""
    from experiments import predict

    try:
        folder = check.model_folder(check.model_source(preset), "skeleton")  # same config and tokenizer as the run's
        return predict(
            preset,
            dry,
            check.work / "runs" / preset.name,
            capacity_gb,
            check.run_flags(folder, "1"),
            device="cpu" if dry else "cuda",
        )
    except Exception as error:  # noqa: BLE001 - recorded as the preset's result
        return f"{type(error).__name__}: {error}"


if __name__ == "__main__":
    main(sys.argv[1:])
