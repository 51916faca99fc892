"""gpu_check's steps besides the matrix: the budget (`Clock`), running a command with a limit and its log
written as it goes, the matmul probe, the trimmed throughput, the accelerate launches (with DeepSpeed's CPU Adam
built in the background from the start) and `pytest -m gpu`."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from alt_text_recipes.train.registry import MEASURED_RUN_FLAGS

from gpu_check_matrix import MIN_STEP_S, MatrixSteps
from gpu_check_report import last_line, throughput_summary

REPO_ROOT = Path(__file__).resolve().parents[1]

BUDGET_S = 300  # one device call of at most 6 minutes, less installing, the last step's overrun and writing
# Seconds each step may take at most (GPU); each also stops at the end of the budget.
LIMITS = {"probe": 90, "throughput": 150, "launch": 120, "preset": 120, "pytest": 300, "weights": 240, "ds_op": 240}
DRY_LIMITS = {name: 600 for name in LIMITS}
# The fair plain loop beside ours, a few timed steps: two fresh processes, each drawing the 3.8B model once.
THROUGHPUT = {
    "gpu": "--config recipes/configs/throughput/opt27b_bf16_full.yaml --model_config data/model_configs/blip2-opt-2.7b"
    " --variants plain_fair ours --images 128 --steps 5 --warmup_steps 2",
    "dry": "--config recipes/configs/tiny/full_ft.yaml --model_config data/models/tiny-blip2-opt"
    " --variants plain_fair ours --images 8 --steps 1 --warmup_steps 1 --batch_size 4 --workers 1",
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
BUILD_DS_OP = (
    "import time; started = time.perf_counter(); from deepspeed.ops.op_builder import CPUAdamBuilder; "
    "CPUAdamBuilder().load(); print(f'CPU Adam ready in {time.perf_counter() - started:.1f} s')"
)


class Clock:
    """The budget: elapsed time, what is left, each step's duration (printed as it goes); `stopped` once a
    signal or the end of the budget stops the check (no step starts after that)."""

    def __init__(self, budget: float):
        self.start, self.budget, self.steps, self.stopped = time.perf_counter(), budget, [], ""

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return 0.0 if self.stopped else self.budget - self.elapsed()

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


def _outcome(returncode: int | None) -> str:
    return "ok" if returncode == 0 else "timeout" if returncode is None else "failed"


class Check(MatrixSteps):
    def __init__(self, args: argparse.Namespace, publish=None):
        self.args, self.dry = args, args.dry
        self.limits = DRY_LIMITS if args.dry else LIMITS
        self.clock = Clock(args.budget)
        self.work = Path(args.work_dir)
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.commands: list[dict] = []
        self.reference_gb = getattr(args, "reference_gb", None)
        self.publish = publish or (lambda key, value: None)  # a partial result, to the results folder
        self.ds_op: tuple[subprocess.Popen, float] | None = None

    # -- commands
    def printable(self, command: list[str]) -> str:
        text = shlex.join(str(part) for part in command).replace(str(REPO_ROOT) + "/", "")
        return text.replace(shlex.quote(sys.executable), '"$PYTHON"', 1) if command[0] == sys.executable else text

    def record(self, step: str, command: list[str] | str) -> str:
        text = command.replace(str(REPO_ROOT) + "/", "") if isinstance(command, str) else self.printable(command)
        self.commands.append({"step": step, "command": text})
        return text

    def start(self, command: list[str], log: Path) -> subprocess.Popen:
        """A command in a process group of its own (killed whole: an accelerate launcher's workers too), its
        output going to `log` as it comes, so that a step cut off leaves what it printed."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(log, "w") as output:
            return subprocess.Popen(
                command, cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )

    def run(self, step: str, command: list[str], timeout: float, log_name: str) -> tuple[int | None, str, float]:
        """Run a command (recorded, logged); (exit status or None on timeout, output, seconds)."""
        print(f"$ {self.record(step, command)}", flush=True)
        started = time.perf_counter()
        process = self.start(command, self.logs / log_name)
        try:
            returncode = process.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            returncode = None
        return returncode, (self.logs / log_name).read_text(errors="replace"), time.perf_counter() - started

    # -- 1. probe
    def probe(self) -> dict:
        with self.clock.step("matmul probe"):
            out = self.work / "probe.json"
            command = [sys.executable, str(REPO_ROOT / "benchmarks/matmul_probe.py"), "--out", str(out)]
            if self.dry:
                command += ["--device", "cpu"]
            returncode, output, _ = self.run("probe", command, self.clock.limit(self.limits["probe"]), "probe.log")
            if returncode != 0:
                tail = "\n".join(output.strip().splitlines()[-15:])
                raise SystemExit(
                    "gpu-check: the matmul probe failed "
                    f"({'timeout' if returncode is None else f'exit {returncode}'}):"
                    f"\n{tail}\nIs a CUDA GPU visible (nvidia-smi)? Without one, run with --dry."
                )
            probe = json.loads(out.read_text())
            if not self.dry and probe.get("cuda") is None:
                raise SystemExit("gpu-check: torch sees no CUDA GPU here; run with --dry for the CPU rehearsal.")
            print(
                f"{probe['device']}: dense bf16 {probe['bf16_tflops']:.4g} TFLOP/s, "
                f"{probe['total_memory_bytes'] / 2**30:.1f} GB"
            )
        return probe

    # -- 3. throughput
    def throughput(self, out_dir: Path, probe_json: Path) -> dict:
        limit = self.clock.limit(self.limits["throughput"])
        if limit < MIN_STEP_S:
            return {"status": "not run", "reason": "time budget"}
        with self.clock.step("throughput"):
            out = out_dir / "throughput.json"
            command = [sys.executable, str(REPO_ROOT / "benchmarks/throughput.py")]
            command += [*THROUGHPUT["dry" if self.dry else "gpu"].split(), "--peak_json", str(probe_json)]
            returncode, output, seconds = self.run(
                "throughput", [*command, "--out", str(out)], limit, "throughput.log"
            )
        if returncode != 0 or not out.exists():
            return {"status": _outcome(returncode), "seconds": seconds, "error": last_line(output)}
        result = json.loads(out.read_text())
        return {"status": "ok", "seconds": seconds, "json": out.name, **throughput_summary(result)}

    # -- 4. accelerate launches
    def build_launch_model(self) -> None:
        """The launches' model: real width, 2 layers per stack, weights written by this process on the CPU (it
        must hold no CUDA context), in the one thread that builds models (model construction is not
        thread-safe: transformers switches weight initialisation off process-wide while it builds a model)."""
        from alt_text_recipes.train.random_weights import build_random_model

        source = str(REPO_ROOT / LAUNCH_MODEL["dry"]) if self.dry else LAUNCH_MODEL["gpu"]
        folder = self.model_folder(source, f"{LAUNCH_LAYERS}layers")
        with self.clock.step("launch model (2 layers per stack, random weights)"):
            self.record(
                "launch: the model",
                f'PYTHONPATH=recipes:$PYTHONPATH "$PYTHON" -c \'from alt_text_recipes.train.random_weights import '
                f'build_random_model; build_random_model("{source}", "{folder}", layers={LAUNCH_LAYERS}, '
                f'device="cpu")\'',
            )
            self.launch_folder = build_random_model(source, folder, layers=LAUNCH_LAYERS, device="cpu")

    def start_deepspeed_op(self) -> None:
        """DeepSpeed's CPU Adam (the ZeRO-offload launch's optimizer) compiled in the background from the
        start (about 40 s on the GPU machine; cached in $TORCH_EXTENSIONS_DIR for later calls)."""
        command = [sys.executable, "-c", BUILD_DS_OP]
        self.record("launch: DeepSpeed's CPU Adam, built in the background", command)
        self.ds_op = (self.start(command, self.logs / "deepspeed_op.log"), time.perf_counter())

    def finish_deepspeed_op(self) -> dict:
        process, started = self.ds_op
        try:
            process.wait(timeout=max(self.clock.limit(self.limits["ds_op"]), 1))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log = (self.logs / "deepspeed_op.log").read_text(errors="replace")
        ready = re.search(r"CPU Adam ready in ([\d.]+) s", log)
        return {
            "status": _outcome(process.returncode),
            "seconds": float(ready.group(1)) if ready else time.perf_counter() - started,
            "note": "from its start to loaded, compile included unless cached" if ready else last_line(log),
        }

    def launches(self) -> list[dict]:
        from alt_text_recipes.outputs.experiment_matrix import cpu_deepspeed_flags, read_measurements

        results = [
            {"name": name, "accelerate_config": config, "preset": preset, "status": "not run", "reason": "not reached"}
            for name, config, preset in LAUNCHES
        ]
        for index, entry in enumerate(results):
            name, accelerate_config, preset = entry["name"], entry["accelerate_config"], entry["preset"]
            if name.startswith("ds_") and self.ds_op:
                self.publish("deepspeed_op", self.finish_deepspeed_op())
            limit = self.clock.limit(self.limits["launch"])
            if limit < MIN_STEP_S:
                entry["reason"] = "time budget"
                continue
            with self.clock.step(f"accelerate launch: {name}"):
                output_dir = self.work / "runs" / f"launch_{name}"
                shutil.rmtree(output_dir, ignore_errors=True)
                launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
                launcher += [str(REPO_ROOT / accelerate_config), "--num_processes", "1"]
                if self.dry:  # CPU: DeepSpeed's GPU-sized buckets cost seconds per step
                    launcher += cpu_deepspeed_flags(accelerate_config, output_dir)
                command = [*launcher, str(REPO_ROOT / "recipes/full_ft.py"), "--config", str(REPO_ROOT / preset)]
                command += ["--model_name_or_path", str(self.launch_folder), "--output_dir", str(output_dir)]
                returncode, output, seconds = self.run(
                    f"launch: {name}", [*command, *LAUNCH_FLAGS], limit, f"launch_{name}.log"
                )
            measured, train_seconds, _, loss = read_measurements(output_dir)
            strategy = re.search(r"^strategy: (.+)$", output, re.MULTILINE)
            status = _outcome(returncode)
            results[index] = {
                **{key: entry[key] for key in ("name", "accelerate_config", "preset")},
                "status": status,
                "seconds": round(seconds, 1),
                "train_seconds": train_seconds,
                "strategy": strategy.group(1) if strategy else None,
                "peak_gb": measured.get("peak"),
                "final_loss": loss,
                "model_saved": any(output_dir.glob("*.safetensors")),
                "error": "" if status == "ok" else last_line(output),
            }
            self.publish("launches", results)
            print(f"--> {status} in {seconds:.0f} s | {results[index]['strategy']} | peak {measured.get('peak')} GB")
        return results

    # -- 5. pytest
    def pytest(self) -> dict:
        limit = self.clock.limit(self.limits["pytest"])
        if limit < MIN_STEP_S:
            return {"status": "not run", "reason": "time budget"}
        with self.clock.step("pytest -m gpu"):
            # `-m gpu` without a GPU is a usage error (tests/conftest.py); the dry run collects the GPU tests,
            # which are then deselected and counted, and ends in exit 5 (no test ran): a failure, as it is here
            selection = ["tests/test_gpu.py", "tests/test_real_width.py", "-k", "gpu"] if self.dry else ["-m", "gpu"]
            command = [sys.executable, "-m", "pytest", *selection, "-q", "-p", "no:cacheprovider", "-rA"]
            returncode, output, seconds = self.run("pytest", [*command, "--durations=0"], limit, "pytest.log")
        summary = next(
            (
                line.strip("= ")
                for line in reversed(output.strip().splitlines())
                if re.search(r"passed|failed|error|no tests ran|deselected|skipped", line)
            ),
            last_line(output),
        )
        meaning = {
            0: "passed",
            1: "some tests failed",
            2: "interrupted (collection errors?)",
            5: "no test ran",
            None: f"cut off at its limit ({limit:.0f} s); the tests it finished are in the log",
        }.get(returncode, f"exit {returncode}")
        print(f"--> {meaning}: {summary}", flush=True)
        return {
            "status": "ok" if returncode == 0 else "failed" if returncode is not None else "timeout",
            "returncode": returncode,
            "meaning": meaning,
            "summary": summary,
            "outcomes": re.findall(r"^(PASSED|FAILED|ERROR) (\S+)", output, re.MULTILINE),
            "seconds": round(seconds, 1),
        }
