"""Validate the recipes on one NVIDIA GPU, in device calls of at most 6 minutes, and write what was measured as
each step finishes: a call cut off (its budget, SIGTERM, Ctrl-C) leaves the finished steps' results.

    python3 benchmarks/gpu_check.py --out DIR        # on the GPU machine: the first call (`make gpu-check`)
    python3 benchmarks/gpu_check.py --out DIR --merge /tmp/gpu-check/results.json   # the next: what is left
    python benchmarks/gpu_check.py --dry             # the same steps on CPU with the tiny twins (`make gpu-check-dry`)

Steps, by value (each in its own process, with a time limit and its log written as it runs; a step is not
started with less than 30 s of the --budget left, 300 s by default):

1. matmul probe (`benchmarks/matmul_probe.py`): this GPU's dense bf16 peak, the MFU denominator, and its
   name and memory (the capacity every estimate is checked against). Meanwhile, in the background: the
   skeletons and the estimator's predictions (this process, on the CPU), the quantized preset's weights folder
   (drawn on the GPU, then written) and DeepSpeed's CPU Adam (compiled; its build time is reported).
2. the technique matrix: every preset in recipes/configs/matrix through the command a user types
   (`recipes/experiments.py`'s run_preset) on its real model with random weights, beside the estimator's
   prediction. Predicted to fit: 2 optimizer steps, measured breakdown and peak beside the estimate. Predicted
   not to fit: 1 step, expecting an out-of-memory error; one that runs instead is a wrong verdict. Each is
   judged against the measured capacity and against the reference GPU the presets are written for
   (--reference_gb, 80 GB): predicted from the estimate, observed from the measured peak. The weights are drawn
   on the GPU at load time (skeletons: nothing written to disk) except for the quantized (QLoRA) preset, which
   reads the weights folder of step 1 (the matrix waits for it: no preset shares the GPU with it). A preset
   whose host-memory estimate exceeds this machine's RAM (DeepSpeed CPU offload of Flan-T5-XXL: ~200 GB) is
   not run and says so. Order: the verdicts most in doubt first (the estimates nearest either capacity; a
   preset whose estimate repeats an earlier one's goes last).
3. throughput (`benchmarks/throughput.py`), trimmed: BLIP-2 OPT-2.7B, bf16 full fine-tuning, batch 16, random
   weights; the fair plain loop (the same math, no Trainer) beside our recipe, 5 timed steps: samples/s, peak
   memory, MFU against step 1, `fair_train_speedup`.
4. `accelerate launch --num_processes 1` through `accelerate_configs/fsdp4.yaml` and
   `accelerate_configs/ds_zero2_offload.yaml`, on OPT-2.7B at real width with 2 layers per stack.
5. `python -m pytest -m gpu` (what the budget leaves, at most 300 s; exit 5, no test ran, is a failure).

Writes --out (default benchmarks/results/gpu-<gpu name>/) after every step: results.md (a table of the steps,
done or not run and why, at the top), results.json (`progress`: each step's status), commands.sh, logs.tar.gz,
and as their steps finish probe.json, memory.png, throughput.json/.md; and a copy of results.json in the
scratch
folder (--work_dir, /tmp/gpu-check). --merge folds an earlier call's results.json in: that call's probe is
reused, and without --parts/--presets only what it did not finish runs.

--dry runs every step on CPU with the tiny twins (data/models/tiny-*), as skeletons and weights folders like
the real ones, one step each at batch 4, the probe on small CPU products, and two presets: `baseline` (a
skeleton) and `qlora` (the weights-folder path), against a simulated capacity midway between their estimates
(the reference: the smaller estimate); results go to benchmarks/results/gpu-dry-cpu/ (or --out). A CPU cannot
run out of memory like a GPU, so there a run whose peak passes the simulated capacity counts as "over
capacity". With no GPU to share, the dry run takes two lanes at once (the matrix then the launches; throughput
then pytest): about 1.5 to 2.5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shlex
import signal
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from gpu_check_matrix import CONTEXT_GB, DRY_PRESETS, REFERENCE_GB, predict_preset, set_verdicts, simulated_capacity
from gpu_check_report import GB, PARTS, PARTS_KEYS, last_line, merge, ran, render, write_results, write_whole
from gpu_check_steps import BUDGET_S, Check

REPO_ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PACKAGES = ("torch", "transformers", "accelerate", "peft", "trl", "datasets", "bitsandbytes", "deepspeed")
PART_KEY = dict(zip(PARTS, PARTS_KEYS, strict=True))
BACKSTOP_S = 20  # past the budget by this much (a step that overran its limit), the check stops itself


class Stopped(BaseException):
    """SIGTERM, SIGINT or the end of the budget: write what finished and stop (raised in the main thread)."""


class Results:
    """The report as it grows, written after every step (`--out` and the scratch folder's results.json),
    merged over --merge's."""

    def __init__(self, report: dict, check: Check, out_dir: Path | None, previous: dict | None):
        self.report, self.check, self.out_dir, self.previous = report, check, out_dir, previous
        self.lock = threading.RLock()

    def set(self, key: str, value, chart: bool = False) -> None:
        with self.lock:
            self.report[key] = value
            self.save(chart)

    def mark(self, part: str, status: str, reason: str = "") -> None:
        with self.lock:
            self.report["progress"][part] = {"status": status, "reason": reason}
            self.save()

    def full(self) -> dict:
        report = {**self.report, "steps": self.check.clock.steps, "commands": self.check.commands}
        report["seconds"] = self.check.clock.elapsed()
        return merge(self.previous, report) if self.previous else report

    def save(self, chart: bool = False) -> None:
        with self.lock:
            report = self.full()
            write_whole(self.check.work / "results.json", json.dumps(report, indent=2, default=str) + "\n")
            if self.out_dir:
                write_results(report, self.out_dir, self.check.work, chart)

    def stop(self, reason: str) -> None:
        """Mark the step running as interrupted and those not reached as not run, and write."""
        with self.lock:
            self.check.clock.stopped = reason
            self.report["stopped"] = reason
            for part, state in self.report["progress"].items():
                if state["status"] == "running":
                    self.report["progress"][part] = {"status": "interrupted", "reason": reason}
                elif state["status"] == "not run" and state["reason"] == "not reached":
                    self.report["progress"][part] = {"status": "not run", "reason": f"stopped first: {reason}"}
            for entry in self.report.get("matrix", []):
                if entry["status"] == "not run" and entry["note"] == "not reached":
                    entry["note"] = f"not finished: {reason}"  # the preset running, and those after it
            self.save()


def step(results: Results, part: str, run) -> None:
    """One part: marked running, its result written as soon as it is known, then done or not run (and why)."""
    results.mark(part, "running")
    try:
        value = run()
    except Exception as error:  # noqa: BLE001 - the check goes on to the next step; the error is its result
        traceback.print_exc()
        results.mark(part, "failed", f"{type(error).__name__}: {last_line(str(error))}")
        return
    results.set(PART_KEY[part], value, chart=part == "matrix")
    entries = value if isinstance(value, list) else [value]
    if any(ran(entry) for entry in entries):
        results.mark(part, "done")
    else:
        reasons = {entry.get("reason") or entry.get("note") or "" for entry in entries} - {""}
        results.mark(part, "not run", ", ".join(sorted(reasons)) or "nothing to run")


def kill_children() -> None:
    """End this process's children (each the leader of its own process group: with the group's processes)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent == os.getpid():
                pid = int(stat.parent.name)
                os.killpg(pid, signal.SIGKILL) if os.getpgid(pid) == pid else os.kill(pid, signal.SIGKILL)
        except (OSError, IndexError, ValueError):
            continue


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


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry", action="store_true", help="the same steps on CPU with the tiny twins")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        help="the steps to run besides the probe (default: all; with --merge: those it did not finish)",
    )
    parser.add_argument(
        "--presets", nargs="+", help="matrix presets (default: all, with --merge those not run; --dry: baseline qlora)"
    )
    parser.add_argument(
        "--budget", type=float, default=None, help=f"seconds for the whole check (default {BUDGET_S}; --dry: no limit)"
    )
    parser.add_argument("--out", type=Path, help="results folder (default benchmarks/results/gpu-<gpu name>)")
    parser.add_argument("--work_dir", default=None, help="scratch: models, runs, logs (default /tmp/gpu-check[-dry])")
    parser.add_argument(
        "--capacity_gb",
        type=float,
        default=None,
        help="GPU memory to check estimates against (default: the "
        "probe's; --dry: simulated, midway between the presets' estimates)",
    )
    parser.add_argument(
        "--reference_gb",
        type=float,
        default=None,
        help=f"a second capacity for the verdicts: the GPU the presets "
        f"are written for (default {REFERENCE_GB:g}; --dry: the smaller estimate)",
    )
    parser.add_argument("--merge", type=Path, help="an earlier results.json to fold in and to finish")
    # internal: write a random-weights folder (run in the background by the check)
    parser.add_argument("--build_model", nargs=2, metavar=("SOURCE", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.budget is None:
        args.budget = 1e9 if args.dry else BUDGET_S
    args.work_dir = args.work_dir or f"/tmp/gpu-check{'-dry' if args.dry else ''}"
    return args


def build_model(source: str, folder: str, device: str) -> None:
    import time

    from alt_text_recipes.train.random_weights import build_random_model

    started = time.perf_counter()
    build_random_model(source, folder, weights=True, device=device)
    print(f"wrote {folder} in {time.perf_counter() - started:.0f} s", flush=True)


def what_to_run(args: argparse.Namespace, previous: dict | None) -> tuple[list[str], list]:
    """The parts and presets of this call: as asked, else all, else (--merge) what the earlier call left."""
    from alt_text_recipes.outputs.experiment_matrix import all_presets, load_preset

    presets = [load_preset(name) for name in args.presets] if args.presets else None
    presets = presets or ([load_preset(name) for name in DRY_PRESETS] if args.dry else all_presets())
    if previous and not args.presets:
        finished = {e["preset"] for e in previous.get("matrix", []) if ran(e) or "host memory" in e.get("note", "")}
        presets = [preset for preset in presets if preset.name not in finished]
    parts = list(args.parts or PARTS)
    if previous and not args.parts:
        left = {
            "matrix": bool(presets),
            "throughput": not ran(previous.get("throughput")),
            "launch": not all(ran(entry) for entry in previous.get("launches") or [{}]),
            "pytest": not ran(previous.get("pytest")),
        }
        parts = [part for part in parts if left[part]]
    return [part for part in PARTS if part in parts], (presets if "matrix" in parts else [])


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if args.build_model:
        return build_model(*args.build_model, args.device)
    previous = json.loads(args.merge.read_text()) if args.merge and args.merge.exists() else None
    if args.merge and not previous:
        print(f"--merge {args.merge}: no such file; this call's results alone", flush=True)
    parts, presets = what_to_run(args, previous)
    check = Check(args)
    check.set_presets(presets)
    print(
        f"gpu-check{' --dry' if args.dry else ''}: budget {args.budget:.0f} s, parts: probe, {', '.join(parts)}; "
        f"{len(presets)} presets, scratch {check.work}",
        flush=True,
    )
    report = {
        "gpu": "CPU (dry run)" if args.dry else "?",
        "dry": args.dry,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "budget_s": args.budget,
        "capacity_gb": args.capacity_gb,
        "reference_gb": args.reference_gb,
        "host_memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB,
        "versions": versions(),
        "python": sys.executable,
        "work_dir": str(check.work),
        "command": "python " + shlex.join([Path(__file__).relative_to(REPO_ROOT).as_posix(), *argv]),
        "progress": {part: {"status": "not run", "reason": "not reached"} for part in ("probe", *parts)},
    }
    out_dir = args.out or (REPO_ROOT / "benchmarks/results/gpu-dry-cpu" if args.dry else None)
    results = Results(report, check, out_dir, previous)
    check.publish = results.set

    def stop(signum, frame):
        if not check.clock.stopped:
            check.clock.stopped = "stopping"
            raise Stopped("the time budget ran out" if signum == signal.SIGALRM else signal.Signals(signum).name)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM):
        signal.signal(signum, stop)
    if args.budget < 1e8:
        signal.setitimer(signal.ITIMER_REAL, args.budget + BACKSTOP_S)
    try:
        run(args, check, results, parts, presets, previous)
    except Stopped as stopped:
        kill_children()
        results.stop(str(stopped))
        print(f"\ngpu-check: stopped ({stopped}); wrote what finished to {out_dir or check.work}", flush=True)
        os._exit(124 if "budget" in str(stopped) else 128 + signal.SIGTERM)
    except SystemExit as failed:
        kill_children()
        results.mark("probe", "failed", str(failed.code).splitlines()[0])
        raise
    signal.setitimer(signal.ITIMER_REAL, 0)
    results.save(chart=True)
    out_dir = results.out_dir
    print(f"\n{render(results.full())}\nwrote {out_dir}/ in {check.clock.elapsed():.0f} s", flush=True)


def run(args, check: Check, results: Results, parts: list[str], presets: list, previous: dict | None) -> None:
    report = results.report
    builds = {}
    for source in sorted({check.model_source(p) for p in presets if p.name in check.quantized}):
        builds[source] = check.start_weights_build(source)
    if "launch" in parts:
        check.start_deepspeed_op()

    # In this process, on the CPU (it holds no CUDA context), beside the probe: the skeletons, the estimates,
    # the launches' model. One thread builds models: model construction is not thread-safe.
    def estimates():
        for source in sorted({check.model_source(p) for p in presets}):
            check.skeleton(source)
        return {p.name: predict_preset(p, check) for p in presets}

    models = ThreadPoolExecutor(max_workers=1)
    estimated = models.submit(estimates)
    launch_model = models.submit(check.build_launch_model) if "launch" in parts else None

    reuse = previous and previous.get("probe") and previous["dry"] == args.dry
    results.mark("probe", "running")
    probe = {**previous["probe"], "reused_from": str(args.merge)} if reuse else check.probe()
    report.update(probe=probe, gpu=report["gpu"] if args.dry else probe["device"])
    results.out_dir = results.out_dir or REPO_ROOT / "benchmarks/results" / f"gpu-{slug(probe['device'])}"
    results.out_dir.mkdir(parents=True, exist_ok=True)
    probe_json = results.out_dir / "probe.json"
    probe_json.write_text(json.dumps(probe, indent=2) + "\n")
    results.mark("probe", "done", f"reused from {args.merge}" if reuse else "")

    def matrix():
        done = estimated.result()
        if args.dry:
            totals = [e["total_gb"] for e in done.values() if isinstance(e, dict)]
            report["capacity_gb"] = report["capacity_gb"] or simulated_capacity(done)
            report["reference_gb"] = report["reference_gb"] or (min(totals) if totals else None)
        else:
            report["capacity_gb"] = report["capacity_gb"] or probe["total_memory_bytes"] / GB
            report["reference_gb"] = report["reference_gb"] or REFERENCE_GB
        set_verdicts(done, report["capacity_gb"], 0.0 if args.dry else CONTEXT_GB)
        check.reference_gb = report["reference_gb"]
        host_gb = report["host_memory_gb"]
        return check.matrix(presets, done, report["capacity_gb"], host_gb, builds)

    def launches():
        launch_model.result()
        return check.launches()

    runs = {
        "matrix": matrix,
        "throughput": lambda: check.throughput(results.out_dir, probe_json),
        "launch": launches,
        "pytest": check.pytest,
    }
    if args.dry:  # a CPU has no GPU to share: two lanes at once halve the rehearsal's time on two cores
        lanes = ThreadPoolExecutor(max_workers=2)
        futures = [
            lanes.submit(lambda names=names: [step(results, part, runs[part]) for part in names if part in parts])
            for names in (("matrix", "launch"), ("throughput", "pytest"))
        ]
        for future in futures:
            future.result()
        lanes.shutdown()
    else:  # one GPU: one step at a time
        for part in parts:
            step(results, part, runs[part])
    models.shutdown()
    for process, _, _ in builds.values():
        if process.poll() is None:
            process.kill()
    if check.ds_op and check.ds_op[0].poll() is None:
        check.ds_op[0].kill()
    report["capacity_gb"] = report["capacity_gb"] or 0.0


if __name__ == "__main__":
    main(sys.argv[1:])
