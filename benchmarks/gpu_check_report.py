"""gpu_check's results: the tables and results.md (`render`), folding an earlier call in (`merge`), and the files
written to the results folder (`write_results`, after every step, so a run cut off leaves what it finished)."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import tarfile
from pathlib import Path

from alt_text_recipes.memory.parts import MemoryParts  # no heavy imports: the package's torch-free corner

GB = 1024**3
# In the order they run, by value: the probe first (the others need its figures), pytest last.
PARTS = ("matrix", "throughput", "launch", "pytest")
PARTS_KEYS = ("matrix", "throughput", "launches", "pytest")  # where each part's result goes


def _run_results(entries: list[dict]):
    from alt_text_recipes.outputs.experiment_matrix import RunResult

    names = {f.name for f in dataclasses.fields(RunResult)}
    return [RunResult(**{key: value for key, value in entry.items() if key in names}) for entry in entries]


def _gb(value) -> str:
    return "" if value is None else f"{value:.2f}"


def matrix_table(entries: list[dict], dry: bool = False) -> str:
    lines = [
        "| preset | model | predicted | observed | verdict | at the reference: predicted / observed / verdict "
        "| estimate total | measured peak | measured ÷ estimate | "
        + " | ".join(f"{part} m / e" for part in MemoryParts.names())
        + " | note |",
        "|" + "---|" * (10 + len(MemoryParts.names())),
    ]
    for entry in entries:
        m, e = entry["measured"], entry["estimate"]
        peak = m.get("peak") if m else entry.get("peak_at_oom_gb")
        peak_text = _gb(peak) + (" at OOM" if not m and peak is not None else "")
        ratio = f"{peak / e['total_gb']:.2f}" if peak and e.get("total_gb") else ""

        def pair(part, m=m, e=e):
            return f"{_gb(m.get(part))} / {_gb(e.get(f'{part}_gb'))}" if m else f"– / {_gb(e.get(f'{part}_gb'))}"

        model = ("twin of " if dry else "") + entry["model"].split("/")[-1]
        at = entry.get("reference") or {}
        reference = " / ".join(at.get(key, "?") for key in ("predicted", "observed", "verdict")) if at else ""
        lines.append(
            f"| {entry['preset']} | {model} | {entry['predicted']} | {entry['observed']} "
            f"| {entry['verdict']} | {reference} | {_gb(e.get('total_gb'))} | {peak_text} | {ratio} | "
            + " | ".join(pair(part) for part in MemoryParts.names())
            + f" | {entry.get('note', '')[:160]} |"
        )
    return "\n".join(lines)


def throughput_summary(result: dict) -> dict:
    training = result["training"]
    return {
        "device": result["device"],
        "model": result["model"],
        "config": result["config"],
        "batch_size": result["batch_size"],
        "steps": result["steps"],
        "peak_tflops": result.get("peak_tflops"),
        "peak_source": result.get("peak_source"),
        "train_speedup": result.get("train_speedup"),  # ours ÷ the tutorial loop (when it ran)
        "fair_train_speedup": result.get("fair_train_speedup"),  # ours ÷ the same math in a plain loop
        "input_pipeline_speedup": result["input_pipeline_speedup"],
        "peak_memory_ratio": result.get("peak_memory_ratio"),
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


def speedup_lines(throughput: dict) -> list[str]:
    """The ratios, the fair one first: ours ÷ a plain loop doing the same math is what our code adds."""
    lines = []
    if throughput.get("fair_train_speedup") is not None:
        lines.append(
            f"fair_train_speedup (ours ÷ plain_fair samples/s, the same math in a plain loop) = "
            f"{throughput['fair_train_speedup']:.2f}×"
        )
    if throughput.get("train_speedup") is not None:
        lines.append(
            f"train_speedup (ours ÷ plain samples/s, the tutorial loop) = {throughput['train_speedup']:.2f}×, "
            f"peak memory ours ÷ plain = {throughput['peak_memory_ratio']:.2f}"
        )
    lines.append(f"input pipeline (cached epoch) {throughput['input_pipeline_speedup']:.2f}×")
    return [", ".join(lines)]


def verdict_counts(entries: list[dict], against: str, verdict_of) -> str:
    verdicts = [(verdict_of(entry) or {}).get("verdict", "not checked") for entry in entries]
    counts = {verdict: verdicts.count(verdict) for verdict in ("correct", "WRONG", "not checked")}
    return (
        f"Verdicts against the {against}: {counts['correct']} correct, {counts['WRONG']} wrong, "
        f"{counts['not checked']} not checked."
    )


def progress_lines(report: dict) -> list[str]:
    """Which steps finished and which did not (and why): a call cut off says so at the top."""
    progress = report.get("progress", {})
    if not progress:
        return []
    lines = ["## Steps", "", "| step | status | note |", "|---|---|---|"]
    lines += [f"| {part} | {state['status']} | {state.get('reason', '')} |" for part, state in progress.items()]
    if report.get("stopped"):
        lines += ["", f"**Stopped early: {report['stopped']}.** The steps above not marked done did not finish."]
    return [*lines, ""]


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def render(report: dict) -> str:
    from alt_text_recipes.outputs.experiment_matrix import markdown_table

    probe = report.get("probe") or {}
    lines = [
        f"# GPU check: {report['gpu']}" + (": tiny twins, simulated capacity" if report["dry"] else ""),
        "",
        f"{report['date']} | {report['seconds']:.0f} s"
        + (" (no time budget)" if report["dry"] else f" of a {report['budget_s']:.0f} s budget")
        + f" | capacity {report['capacity_gb'] or 0:.2f} GB{' (simulated)' if report['dry'] else ''}"
        + f", reference {report.get('reference_gb') or 0:.2f} GB"
        + f" | host {report['host_memory_gb']:.0f} GB | "
        + ", ".join(f"{name} {version}" for name, version in report["versions"].items()),
        "",
        *progress_lines(report),
        "## Matmul probe (the MFU denominator)",
        "",
    ]
    if probe:
        lines.append(
            f"Dense bf16 matrix product: **{probe['bf16_tflops']:.4g} TFLOP/s** (best of sizes "
            + ", ".join(f"{size}: {value:.4g}" for size, value in probe["bf16_by_size"].items())
            + f"); fp32 {probe['fp32_tflops']:.4g} TFLOP/s. "
            + f"{probe['device']}, torch {probe['torch']}, CUDA {probe['cuda']}."
            + (f" (From {probe['reused_from']}.)" if probe.get("reused_from") else "")
        )
    lines += [
        "",
        "## Technique matrix: estimate vs measured",
        "",
    ]
    entries = report.get("matrix", [])
    if entries:
        lines += [
            verdict_counts(entries, f"capacity {report['capacity_gb'] or 0:.2f} GB", lambda e: e),
            verdict_counts(
                entries, f"reference {report.get('reference_gb') or 0:.2f} GB", lambda e: e.get("reference")
            ),
            "",
            "The reference verdict sets the same estimate and measured peak against the GPU the presets are "
            "written for (a preset that ran out of memory here would there too). GB; m / e = measured / "
            "estimated (measured: the run's last memory report; peak = the GPU "
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
                f"`python3 benchmarks/gpu_check.py --merge {report['work_dir']}/results.json` (it runs what "
                "this call did not) on the same machine while it is warm, or later with `--merge` of this "
                "folder's results.json.",
                "",
            ]
    else:
        lines += ["not run", ""]
    lines += ["## Throughput: ours vs the plain loop", ""]
    throughput = report.get("throughput") or {}
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
        lines += ["", *speedup_lines(throughput), ""]
    else:
        lines += [
            f"{throughput.get('status', 'not run')}: {throughput.get('error') or throughput.get('reason', '')}",
            "",
        ]
    lines += ["## accelerate launch, one process", ""]
    op = report.get("deepspeed_op")
    if op:
        lines += [
            f"DeepSpeed's CPU Adam, built in the background from the start: {op['status']} in {op['seconds']:.0f} s "
            f"({op.get('note', '')}).",
            "",
        ]
    lines += [
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
    pytest = report.get("pytest") or {}
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


def ran(result: dict | None) -> bool:
    """Whether a step's result (or a preset's, a launch's) holds something measured: not "not run"."""
    return bool(result) and result.get("status") not in (None, "not run")


def merge(previous: dict, report: dict) -> dict:
    """`report` over `previous`: what this call did not run (a part, a preset, a launch) is kept from `previous`."""
    merged = {**previous, **{key: value for key, value in report.items() if key not in (*PARTS_KEYS, "progress")}}
    for key in ("throughput", "pytest"):
        merged[key] = report.get(key, {}) if ran(report.get(key)) or key not in previous else previous[key]
    for key, name in (("launches", "name"), ("matrix", "preset")):
        old = {entry[name]: entry for entry in previous.get(key, [])}
        for entry in report.get(key, []):
            if ran(entry) or entry[name] not in old:
                old[entry[name]] = entry
        merged[key] = list(old.values())
    progress = dict(previous.get("progress", {}))
    for part, state in report.get("progress", {}).items():
        if state["status"] != "not run" or progress.get(part, {}).get("status") in (None, "not run"):
            progress[part] = state
    merged["progress"] = progress
    merged["steps"] = previous.get("steps", []) + report["steps"]
    merged["commands"] = previous.get("commands", []) + report["commands"]
    return merged


def write_whole(path: Path, text: str) -> None:
    """Whole or not at all: a process killed mid-write leaves the previous version, not half a file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def write_results(report: dict, out_dir: Path, work: Path, chart: bool = True) -> None:
    """results.json, results.md, commands.sh, logs.tar.gz (and memory.png with `chart`): after every step."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_whole(out_dir / "results.json", json.dumps(report, indent=2, default=str) + "\n")
    write_whole(out_dir / "results.md", render(report))
    script = [
        "#!/bin/sh",
        f"# gpu-check on {report['gpu']}, {report['date']}: every command, in order, as run.",
        f"PYTHON={shlex.quote(report['python'])}",
        "",
    ]
    script += [f"# {command['step']}\n{command['command']}" for command in report["commands"]]
    write_whole(out_dir / "commands.sh", "\n".join(script) + "\n")
    measured = [entry for entry in report.get("matrix", []) if entry.get("measured") or entry.get("estimate")]
    if chart and measured:
        from alt_text_recipes.outputs.experiment_matrix import draw_chart

        title = (
            "Dry run (tiny twins, CPU): measured memory vs estimate"
            if report["dry"]
            else f"{report['gpu']}: measured memory vs estimate"
        )
        draw_chart(_run_results(measured), out_dir / "memory.png", round(report["capacity_gb"] or 0, 2), title)
    partial = out_dir / "logs.tar.gz.partial"
    with tarfile.open(partial, "w:gz") as archive:
        archive.add(work / "logs", arcname="logs")
    os.replace(partial, out_dir / "logs.tar.gz")
