"""What `benchmarks/throughput.py` reports once every run is in: the MFU peak and where it came from (--peak_tflops,
else the matmul probe's JSON, else none), model FLOP/s and MFU from the forward FLOPs a plain loop counted, the
ratios (`train_speedup` = ours ÷ plain, `fair_train_speedup` = ours ÷ plain_fair, with --torch_compile the compiled
one, and the peak-memory ratio), the markdown table printed to stdout, and the JSON and markdown written to --out.
"""

from __future__ import annotations

import json
from pathlib import Path

from alt_text_recipes.memory.measured import GB


def peak_tflops(requested: float | None, probe_json: str | None) -> tuple[float | None, str]:
    """The MFU denominator and where it came from: --peak_tflops, else the matmul probe's JSON, else none."""
    if requested is not None:
        return requested, "--peak_tflops"
    if probe_json:
        probe = json.loads(Path(probe_json).read_text())
        return probe["bf16_tflops"], f"dense bf16 matmul measured on {probe['device']} ({probe_json})"
    return None, "none given: MFU n/a (measure it with benchmarks/matmul_probe.py, pass --peak_json)"


def add_flops(training: dict[str, dict], batch_size: int, peak: float | None) -> dict:
    counted = next(run for run in training.values() if "forward_flops_per_batch" in run)  # a plain loop's count
    forward = counted["forward_flops_per_batch"]
    counted_batch = counted.get("flops_batch_size", batch_size)
    per_sample = {part: 3 * flops / counted_batch for part, flops in forward.items()}
    for result in training.values():
        result["model_tflops_per_s"] = per_sample["total"] * result["samples_per_s"] / 1e12
        result["mfu"] = result["model_tflops_per_s"] / peak if peak else None
    return per_sample


def report(result: dict) -> str:
    timed = (
        f"{result['epochs']} epochs over {result['input_pipeline'][0]['images']} images, each run timed whole "
        f"(worker start per epoch, logging, memory report and progress bar included)"
        if result.get("epochs")
        else f"{result['steps']} timed steps after {result['warmup_steps']} warm-up"
    )
    photos = result.get("photos", "640×480 JPEG")
    lines = [
        f"device: {result['device']} | model: {result['model']} | preset: {result['config']} | "
        f"batch {result['batch_size']} | {timed}",
        "",
        f"Input pipeline, images/s over {result['input_pipeline'][0]['images']} {photos}s "
        f"({result['input_pipeline'][0]['workers']} workers; ratio to plain in brackets)",
        "| image size | plain | ours, decoded in workers each epoch | ours cached: first epoch (builds the cache) "
        "| ours cached: each later epoch |",
        "|---|---|---|---|---|",
    ]
    for row in result["input_pipeline"]:
        lines.append(
            f"| {row['image_size']}² | {row['plain_images_per_s']:.0f} | {row['workers_images_per_s']:.0f} "
            f"({row['workers_speedup']:.1f}×) | {row['cached_first_epoch_images_per_s']:.0f} "
            f"({row['first_epoch_speedup']:.1f}×) | {row['cached_epoch_images_per_s']:.0f} ({row['speedup']:.1f}×) |"
        )
    repeats = len(next(iter(result["training"].values())).get("samples_per_s_runs", [0]))
    lines += [
        "",
        f"Training (each variant in a fresh process; {repeats} interleaved run(s), the median shown, "
        "every run's samples/s in the last column)",
        "| loop | attention | optimizer | steps/s | samples/s | peak memory | model TFLOP/s | MFU "
        "| samples/s per run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in result["training"].items():
        mfu = f"{100 * run['mfu']:.1f}%" if run.get("mfu") is not None else "n/a"
        each = ", ".join(f"{value:.1f}" for value in run.get("samples_per_s_runs", [run["samples_per_s"]]))
        lines.append(
            f"| {name} | {run['attention']} | {run['optimizer']} | {run['steps_per_s']:.2f} | "
            f"{run['samples_per_s']:.1f} | {run['peak_bytes'] / GB:.2f} GB ({run['peak_source']}) | "
            f"{run['model_tflops_per_s']:.3f} | {mfu} | {each} |"
        )
    flops = result["model_flops_per_sample"]
    peak = result.get("peak_tflops")
    lines += [
        "",
        f"MFU peak: {f'{peak:.4g} TFLOP/s' if peak else 'none'} ({result.get('peak_source', 'not recorded')})",
    ]
    lines += [
        "",
        "Model FLOPs per training sample (3 × forward): "
        + ", ".join(f"{part} {value / 1e9:.2f} GFLOP" for part, value in flops.items()),
        "",
        f"input_pipeline_speedup = {result['input_pipeline_speedup']:.2f}×  (ours ÷ plain images/s per epoch once "
        f"the cache is built, {result['input_pipeline'][0]['image_size']}²; first epoch "
        f"{result['input_pipeline'][0]['first_epoch_speedup']:.2f}×, without the cache "
        f"{result['input_pipeline'][0]['workers_speedup']:.2f}×)",
    ]
    if "train_speedup" in result:
        lines.append(
            f"train_speedup = {result['train_speedup']:.2f}×  (ours ÷ plain samples/s), "
            f"peak memory ours ÷ plain = {result['peak_memory_ratio']:.2f}"
        )
    if "fair_train_speedup" in result:
        lines.append(
            f"fair_train_speedup = {result['fair_train_speedup']:.2f}×  (ours ÷ plain_fair samples/s, medians; per "
            "run: " + ", ".join(f"{ratio:.2f}" for ratio in result["fair_train_speedup_runs"]) + ")"
        )
    if "compiled_train_speedup" in result:
        lines.append(f"with --torch_compile: {result['compiled_train_speedup']:.2f}× the plain loop")
    return "\n".join(lines)


def add_ratios(result: dict, training: dict[str, dict]) -> None:
    """The training ratios, into `result`: ours against plain (and its peak memory), against plain_fair (the
    medians and run by run) and, with --torch_compile, the compiled run against plain; each where both ran."""
    if "plain" in training:
        result["train_speedup"] = training["ours"]["samples_per_s"] / training["plain"]["samples_per_s"]
        result["peak_memory_ratio"] = training["ours"]["peak_bytes"] / training["plain"]["peak_bytes"]
    if "plain_fair" in training:
        result["fair_train_speedup"] = training["ours"]["samples_per_s"] / training["plain_fair"]["samples_per_s"]
        result["fair_train_speedup_runs"] = [
            ours / fair
            for ours, fair in zip(
                training["ours"]["samples_per_s_runs"], training["plain_fair"]["samples_per_s_runs"], strict=True
            )
        ]
    if "ours_compiled" in training and "plain" in training:
        result["compiled_train_speedup"] = (
            training["ours_compiled"]["samples_per_s"] / training["plain"]["samples_per_s"]
        )


def write_results(result: dict, out: Path) -> None:
    """The JSON to `out` and, beside it, the markdown report headed by the command that made it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(f"`{result['command']}`\n\n{report(result)}\n")
    print(f"wrote {out} and {out.with_suffix('.md')}")
