"""Named experiment presets: how to launch one, its tiny CPU twin, and what a run measured."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import yaml

from alt_text_recipes.data.errors import RecipeError
from alt_text_recipes.data.paths import REPO_ROOT, shipped_config
from alt_text_recipes.memory.parts import MemoryParts
from alt_text_recipes.train.families import TWINS
from alt_text_recipes.train.registry import MEASURED_RUN_FLAGS

MATRIX_DIR = REPO_ROOT / "recipes" / "configs" / "matrix"
# What the tiny twin changes: the model (same family, same technique) and a short CPU run.
TINY_TWIN_FLAGS = ["--use_cpu", "true", "--max_steps", "1", *MEASURED_RUN_FLAGS, "--max_train_samples", "128"]


@dataclass
class Preset:
    name: str
    path: Path
    settings: dict

    @property
    def recipe(self) -> str:
        return self.settings["recipe"]

    @property
    def accelerate_config(self) -> str | None:
        return self.settings.get("accelerate_config")

    @property
    def title(self) -> str:
        return self.settings.get("title") or self.name

    @property
    def launch(self) -> str | None:
        """The command the preset says it is run with (its `launch:` key)."""
        return self.settings.get("launch")


def load_preset(name_or_path: str) -> Preset:
    """A preset by name (`recipes/configs/matrix/<name>.yaml`) or by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = MATRIX_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in MATRIX_DIR.glob("*.yaml")))
        raise RecipeError(f"no preset '{name_or_path}'; the presets are: {known}.")
    settings = yaml.safe_load(path.read_text())
    if "recipe" not in settings:
        raise RecipeError(f"{path} does not say which recipe it is for (a `recipe:` line).")
    return Preset(path.stem, path, settings)


def all_presets() -> list[Preset]:
    return [load_preset(str(path)) for path in sorted(MATRIX_DIR.glob("*.yaml"))]


def tiny_model_for(model_name: str) -> str:
    """The tiny twin a preset's model is rehearsed on: the one its family declares for its shipped config;
    for a model without one, BLIP-2's twin by the name (Flan-T5 or OPT)."""
    if shipped_config(model_name):
        # imported here: it loads the processors' code, only when asked
        from alt_text_recipes.train.random_weights import real_config, twin_of

        return twin_of(real_config(model_name))
    return TWINS["blip2-t5" if "t5" in model_name.lower() else "blip2-opt"].folder


def recipe_args(preset: Preset, tiny: bool, output_dir: Path, extra_args: Sequence[str] = ()) -> list[str]:
    """The recipe's arguments for a preset (or its tiny twin), then `extra_args` (which win)."""
    args = ["--config", str(preset.path), "--output_dir", str(output_dir)]
    if tiny:
        args += ["--model_name_or_path", tiny_model_for(preset.settings["model_name_or_path"]), *TINY_TWIN_FLAGS]
    return [*args, *extra_args]


def cpu_deepspeed_flags(accelerate_config: str, output_dir: Path) -> list[str]:
    """For a CPU run under a DeepSpeed accelerate config: launcher flags pointing at its DeepSpeed JSON
    with a small all-gather bucket (5e8 elements suits GPUs but costs seconds per step on CPU); every
    other value as shipped. No flags for other configs."""
    settings = yaml.safe_load((REPO_ROOT / accelerate_config).read_text())
    ds_file = (settings.get("deepspeed_config") or {}).get("deepspeed_config_file")
    if not ds_file:
        return []
    ds_settings = json.loads((REPO_ROOT / ds_file).read_text())
    ds_settings["zero_optimization"]["allgather_bucket_size"] = 5e5
    output_dir.mkdir(parents=True, exist_ok=True)
    cpu_file = output_dir / "deepspeed_cpu.json"
    cpu_file.write_text(json.dumps(ds_settings, indent=2))
    return ["--deepspeed_config_file", str(cpu_file)]


def launch_command(preset: Preset, tiny: bool, output_dir: Path, extra_args: Sequence[str] = ()) -> list[str]:
    """The command a user would type, as an argument list (`extra_args` go to the recipe)."""
    script = str(REPO_ROOT / "recipes" / f"{preset.recipe}.py")
    if not preset.accelerate_config:
        return [sys.executable, script, *recipe_args(preset, tiny, output_dir, extra_args)]
    launcher = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO_ROOT / preset.accelerate_config),
    ]
    if tiny:
        launcher += ["--num_processes", "1", *cpu_deepspeed_flags(preset.accelerate_config, output_dir)]
    return [*launcher, script, *recipe_args(preset, tiny, output_dir, extra_args)]


def run_command(
    command: Sequence[str], timeout: float, cwd: Path = REPO_ROOT, env: dict | None = None
) -> tuple[int | None, str]:
    """Run `command` in a process group of its own, stdout and stderr together; past `timeout` seconds the
    whole group is killed (an accelerate launcher's workers too, which would otherwise keep their GPU memory).
    Returns the exit status (None when it timed out) and the output."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    process = subprocess.Popen(
        list(command),
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
        return process.returncode, output
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return None, output


@dataclass
class RunResult:
    preset: str
    title: str
    status: str  # ok, OOM, failed, timeout
    train_seconds: float | None = None
    samples_per_second: float | None = None
    final_loss: float | None = None
    measured: dict = field(default_factory=dict)  # GB, the last memory report
    estimate: dict = field(default_factory=dict)  # GB, the estimator's prediction
    command: str = ""
    error: str = ""


def read_measurements(output_dir: Path) -> tuple[dict, float | None, float | None, float | None]:
    """Last memory report (GB), train runtime, samples/s and final loss from trainer_state.json."""
    state_file = output_dir / "trainer_state.json"
    if not state_file.exists():
        return {}, None, None, None
    history = json.loads(state_file.read_text())["log_history"]
    memory = [entry for entry in history if "memory/params_gb" in entry]
    measured = {
        key.removeprefix("memory/").removesuffix("_gb"): value
        for key, value in (memory[-1] if memory else {}).items()
        if key.startswith("memory/")
    }
    summary = next((entry for entry in reversed(history) if "train_runtime" in entry), {})
    losses = [entry["loss"] for entry in history if "loss" in entry]
    return (
        measured,
        summary.get("train_runtime"),
        summary.get("train_samples_per_second"),
        (losses[-1] if losses else None),
    )


def classify_failure(log: str) -> str:
    return "OOM" if re.search(r"OutOfMemoryError|out of memory|CUDA error: out of memory", log) else "failed"


def markdown_table(results: list[RunResult], device: str) -> str:
    measured_columns = (*MemoryParts.names(), "peak")
    columns = ["preset", "status", "train s", "samples/s", "final loss", *measured_columns]
    columns += ["estimate total", "estimate fits"]
    header = "| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|"
    rows = []
    for r in results:
        m, e = r.measured, r.estimate

        def gb(value):
            return "" if value is None else f"{value:.3f}"

        cells = [r.preset, r.status, gb(r.train_seconds), gb(r.samples_per_second), gb(r.final_loss)]
        cells += [gb(m.get(part)) for part in measured_columns]
        cells += [gb(e.get("total_gb")), e.get("fits", "")]
        rows.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    note = "Memory in GB. Measured: the last `[memory]` report of the run; peak is " + (
        "the GPU allocator's maximum." if device == "cuda" else "the process's peak RSS (CPU run)."
    )
    return "\n".join([header, *rows, "", note])


def draw_chart(results: list[RunResult], path: Path, capacity_gb: float | None, title: str) -> None:
    """Stacked bars of the measured breakdown per preset, the estimate as a marker, capacity as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = MemoryParts.names()
    colours = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8c8c8c"]
    names = [r.preset for r in results]
    figure, axis = plt.subplots(figsize=(max(8, 0.8 * len(results) + 3), 5.5))
    bottoms = [0.0] * len(results)
    for part, colour in zip(parts, colours, strict=False):
        heights = [r.measured.get(part, 0.0) or 0.0 for r in results]
        axis.bar(names, heights, bottom=bottoms, label=part, color=colour)
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    estimates = [r.estimate.get("total_gb") for r in results]
    axis.scatter(names, estimates, marker="D", color="black", zorder=3, label="estimate (total)")
    for index, r in enumerate(results):
        if r.status != "ok":
            axis.annotate(
                r.status,
                (index, max(bottoms[index], estimates[index] or 0)),
                ha="center",
                xytext=(0, 4),
                textcoords="offset points",
                color="#c44e52",
                fontweight="bold",
            )
    if capacity_gb:
        axis.axhline(capacity_gb, color="#c44e52", linestyle="--", label=f"GPU capacity {capacity_gb:g} GB")
    axis.set_ylabel("GB")
    axis.set_title(title)
    axis.legend(fontsize=8)
    plt.setp(axis.get_xticklabels(), rotation=35, ha="right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def estimate_gb(estimate) -> dict:
    """What results.json keeps of an estimate: the parts and total in GB, host memory, the verdict."""
    return {**estimate.memory.gb(), "host_gb": estimate.host_gb, "fits": estimate.fits}
