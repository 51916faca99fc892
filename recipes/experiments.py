"""Run named technique presets side by side and table and chart what each costs.

    python recipes/experiments.py baseline bf16_true qlora             # the real presets, on a GPU
    python recipes/experiments.py --tiny --all                         # every tiny twin, on CPU
    python recipes/experiments.py --tiny lora qlora --out_dir /tmp/m   # some twins, elsewhere

Each preset runs in its own subprocess (an OOM or a crash is a recorded result, not the end of the
run) through the command a user would type, and the estimator's prediction is computed beside it.
Writes results.json, results.md and memory.png to --out_dir (default benchmarks/results/matrix-<cpu|gpu>).
A tiny twin is the preset with the embedded tiny model of the same family, on CPU, for one optimizer step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from alt_text_recipes.data.errors import exit_on_user_error
from alt_text_recipes.data.paths import REPO_ROOT
from alt_text_recipes.memory.estimator import estimate_run
from alt_text_recipes.outputs.experiment_matrix import (
    RunResult,
    all_presets,
    classify_failure,
    draw_chart,
    estimate_gb,
    launch_command,
    load_preset,
    markdown_table,
    read_measurements,
    recipe_args,
    run_command,
)


def predict(
    preset, tiny: bool, output_dir: Path, gpu_memory: float, extra_args: Sequence[str] = (), device: str | None = None
) -> dict:
    """The estimator's prediction (GB) for the run `run_preset` launches with the same arguments."""
    from alt_text_recipes.train.arguments import parse_recipe_args

    script_args, training_args, model_args = parse_recipe_args(
        preset.recipe, recipe_args(preset, tiny, output_dir, extra_args)
    )
    result = estimate_run(
        script_args,
        training_args,
        model_args,
        gpu_memory_gb=gpu_memory,
        device=device or ("cpu" if tiny else "cuda"),
    )
    return estimate_gb(result)


def run_preset(
    preset,
    tiny: bool,
    out_dir: Path,
    timeout: int,
    gpu_memory: float,
    extra_args: Sequence[str] = (),
    prediction: dict | None = None,
    device: str | None = None,
) -> RunResult:
    """Run one preset (its tiny twin with `tiny`) in its own process, `extra_args` added to the recipe's
    arguments; its estimate is computed here unless given."""
    output_dir = out_dir / "runs" / preset.name
    command = launch_command(preset, tiny, output_dir, extra_args)
    printable = shlex.join(command).replace(str(REPO_ROOT) + "/", "")
    print(f"\n=== {preset.name}: {preset.title}\n$ {printable}", flush=True)
    result = RunResult(preset.name, preset.title, "ok", command=printable)
    result.estimate = prediction or predict(preset, tiny, output_dir, gpu_memory, extra_args, device)
    log_path = out_dir / "logs" / f"{preset.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    returncode, log = run_command(command, timeout)
    if returncode is None:
        result.status, result.error = "timeout", f"over {timeout:.0f} s"
    elif returncode != 0:
        result.status = classify_failure(log)
        result.error = log.strip().splitlines()[-1][:300] if log.strip() else f"exit {returncode}"
    log_path.write_text(log)
    result.measured, result.train_seconds, result.samples_per_second, result.final_loss = read_measurements(output_dir)
    print(
        f"--> {result.status} in {time.perf_counter() - start:.0f} s | measured peak {result.measured.get('peak')} GB"
        f" | estimated {result.estimate['total_gb']:.3f} GB ({'fits' if result.estimate['fits'] else 'OOM'})"
        + (f" | {result.error}" if result.error else ""),
        flush=True,
    )
    return result


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("presets", nargs="*", help="preset names (recipes/configs/matrix/<name>.yaml) or paths")
    parser.add_argument("--all", action="store_true", help="every preset in recipes/configs/matrix")
    parser.add_argument("--tiny", action="store_true", help="run the tiny CPU twins instead of the real presets")
    parser.add_argument("--out_dir", type=Path, help="where results go (default benchmarks/results/matrix-<cpu|gpu>)")
    parser.add_argument(
        "--gpu_memory", type=float, default=80.0, help="GPU capacity in GB, for the estimate and chart"
    )
    parser.add_argument("--timeout", type=int, default=3600, help="seconds before a preset's run is stopped")
    parser.add_argument(
        "--jobs", type=int, default=1, help="presets run at once (CPU twins only: GPU runs must not share the GPU)"
    )
    args = parser.parse_args(argv)
    presets = all_presets() if args.all else [load_preset(name) for name in args.presets]
    if not presets:
        parser.error("name at least one preset, or --all")
    out_dir = args.out_dir or REPO_ROOT / "benchmarks" / "results" / f"matrix-{'cpu' if args.tiny else 'gpu'}"
    out_dir.mkdir(parents=True, exist_ok=True)

    jobs = args.jobs if args.tiny else 1
    # Estimated one after another here, not in the threads: an estimate reads the data set, and `datasets`'
    # progress bars share one class-level lock that two threads can delete twice (tqdm's ensure_lock).
    predictions = [predict(p, args.tiny, out_dir / "runs" / p.name, args.gpu_memory, (), None) for p in presets]
    with ThreadPoolExecutor(max_workers=jobs) as pool:  # each run is its own process; threads only wait
        results = list(
            pool.map(
                lambda p, e: run_preset(p, args.tiny, out_dir, args.timeout, args.gpu_memory, prediction=e),
                presets,
                predictions,
            )
        )
    device = "cpu" if args.tiny else "cuda"
    command = "python recipes/experiments.py " + shlex.join(argv)
    (out_dir / "results.json").write_text(
        json.dumps(
            {"command": command, "device": device, "results": [dataclasses.asdict(r) for r in results]}, indent=2
        )
    )
    (out_dir / "results.md").write_text(f"Command: `{command}`\n\n{markdown_table(results, device)}\n")
    title = (
        "Tiny twins on CPU: measured memory (bars) vs estimate" if args.tiny else "Measured memory per GPU vs estimate"
    )
    draw_chart(results, out_dir / "memory.png", None if args.tiny else args.gpu_memory, title)
    print(f"\n{markdown_table(results, device)}\n\nwrote {out_dir}/results.json, results.md, memory.png")


if __name__ == "__main__":
    exit_on_user_error(main, sys.argv[1:])
