"""Alt text on a CPU server: fp32, bf16 and int8 (`--quantize int8`) side by side, and 1 vs 2 processes.

    python benchmarks/alt_text_cpu.py --out benchmarks/results/alt-text-cpu     # ~10 min on 2 cores

1. Precision. Each model is loaded three times as `recipes/alt_text.py` loads it (fp32, bf16, dynamic int8
   linear layers) and writes alt text for the same photos with the same settings; the variants are timed
   interleaved (--repeats, median reported) and the images/s are compared as ratios to fp32.
   - the embedded tiny BLIP-2 (data/models/tiny-blip2-opt) on the whole test split of the embedded photos,
     with CIDEr against the test references (each image captioned once, all its references);
   - BLIP-2 OPT-2.7B at real width (its shipped config: real vision, Q-Former and OPT widths and vocabulary)
     with one layer per stack and random weights: speed only, its text is noise. Every image gets exactly
     --real_tokens new tokens so the variants do the same work. bf16 runs on --bf16_images only: a CPU
     without bf16 instructions multiplies bf16 matrices ~100x slower than fp32.
2. Processes. `recipes/alt_text.py` on the test split with the tiny model: one process on all cores, one
   process on one core (OMP_NUM_THREADS=1), and one process per core (`accelerate launch --num_processes N
   ... --use_cpu true`, one thread each), as it prints images/s (model loading excluded).
Writes results.md and results.json to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from alt_text_recipes.data.sources import load_caption_dataset
from alt_text_recipes.outputs.evaluation import images_with_references
from alt_text_recipes.outputs.generation import generate_for_dataset
from alt_text_recipes.outputs.metrics import caption_scores
from alt_text_recipes.train.modeling import load_for_inference
from alt_text_recipes.train.random_weights import build_random_model

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = "data/models/tiny-blip2-opt"
REAL = "Salesforce/blip2-opt-2.7b"
VARIANTS = {"fp32": ("float32", "none"), "bf16": ("bfloat16", "none"), "int8": ("float32", "int8")}


def timed_generation(model, processor, images, batch_size: int, tokens: dict) -> tuple[float, list[str]]:
    started = time.perf_counter()
    captions = generate_for_dataset(model, processor, images, batch_size, **tokens)
    return len(images) / (time.perf_counter() - started), captions


def compare_precisions(
    folder: str, images, references, batch_size: int, repeats: int, tokens: dict, bf16_images: int | None
) -> dict:
    """images/s of each variant (median of `repeats`, interleaved) and, with references, its CIDEr."""
    models = {name: load_for_inference(folder, dtype, quantize) for name, (dtype, quantize) in VARIANTS.items()}
    subsets = {name: images for name in VARIANTS}
    if bf16_images is not None:
        subsets["bf16"] = images.select(range(bf16_images))
    for name, (model, processor) in models.items():  # warm-up: first-call allocations, int8 weight packing
        generate_for_dataset(model, processor, subsets[name].select(range(1)), 1, **tokens)
    speeds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    captions: dict[str, list[str]] = {}
    for _ in range(repeats):
        for name, (model, processor) in models.items():
            speed, captions[name] = timed_generation(model, processor, subsets[name], batch_size, tokens)
            speeds[name].append(speed)
            print(f"  {name}: {speed:.2f} images/s", flush=True)
    results = {}
    for name in VARIANTS:
        median = statistics.median(speeds[name])
        results[name] = {
            "images": len(subsets[name]),
            "images_per_s": median,
            "runs": speeds[name],
            "vs_fp32": median / statistics.median(speeds["fp32"]),
        }
        if references is not None:
            results[name]["cider"] = caption_scores(captions[name], references, embedding_model=None)["cider"]
            results[name]["same_text_as_fp32"] = sum(
                a == b for a, b in zip(captions[name], captions["fp32"], strict=True)
            ) / len(captions["fp32"])
    return results


def images_per_s_of_cli(processes: int, threads: int, photos: str, output: Path, batch_size: int) -> float:
    script = ["recipes/alt_text.py", "--model_name_or_path", TINY, "--images", photos, "--output_dir", str(output)]
    flags = ["--batch_size", str(batch_size), "--overwrite", "true", "--use_cpu", "true"]
    launcher = (
        [sys.executable]
        if processes == 1
        else [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)]
        + ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    )
    result = subprocess.run(
        [*launcher, *script, *flags],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)},
    )
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    return float(re.search(r"([\d.]+) images/s", result.stdout).group(1))


def markdown(results: dict) -> str:
    lines = [
        f"# Alt text on a CPU ({results['machine']})",
        "",
        f"Command: `{results['command']}`",
        "",
        "## fp32, bf16, int8",
        "",
        "| model | variant | images | images/s | vs fp32 | CIDEr (test) | same text as fp32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, variants in results["precision"].items():
        for name, row in variants.items():
            cider = f"{row['cider']:.3f}" if "cider" in row else "- (random weights)"
            same = f"{row['same_text_as_fp32']:.0%}" if "same_text_as_fp32" in row else "-"
            lines.append(
                f"| {model} | {name} | {row['images']} | {row['images_per_s']:.2f} | {row['vs_fp32']:.2f}x | "
                f"{cider} | {same} |"
            )
    lines += [
        "",
        "## Processes (recipes/alt_text.py, tiny model, test split)",
        "",
        "| processes x threads | images/s |",
    ]
    lines += ["|---|---|"] + [f"| {n} | {speed:.2f} |" for n, speed in results["processes"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/alt-text-cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--real_images", type=int, default=8, help="photos for the real-width model")
    parser.add_argument("--real_tokens", type=int, default=20, help="new tokens per photo, real-width model")
    parser.add_argument("--bf16_images", type=int, default=2, help="photos for bf16 at real width")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    test = load_caption_dataset(str(REPO_ROOT / "data/gourmetgram-mini"))["test"]
    images, references = images_with_references(test)
    results = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        "precision": {},
    }
    print(f"tiny BLIP-2 on {len(images)} test photos", flush=True)
    results["precision"]["tiny BLIP-2 (embedded)"] = compare_precisions(
        TINY, images, references, args.batch_size, args.repeats, {"max_new_tokens": 40}, None
    )
    with tempfile.TemporaryDirectory() as work:
        folder = build_random_model(REAL, Path(work) / "real-width", layers=1, dtype="float32", device="cpu")
        tokens = {"max_new_tokens": args.real_tokens, "min_new_tokens": args.real_tokens}
        print(f"{REAL} at real width, 1 layer per stack, on {args.real_images} photos", flush=True)
        results["precision"]["BLIP-2 OPT-2.7B width, 1 layer/stack"] = compare_precisions(
            str(folder),
            images.select(range(args.real_images)),
            None,
            args.batch_size,
            1,
            tokens,
            args.bf16_images,
        )
        photos = str(REPO_ROOT / "data/gourmetgram-mini/test")
        cores = os.cpu_count() or 1
        layouts = [(1, cores), (1, 1), (cores, 1)]  # all cores in one process, one core, a process per core
        results["processes"] = {
            f"{n} x {threads} thread(s)": images_per_s_of_cli(
                n, threads, photos, Path(work) / f"cli-{n}-{threads}", args.batch_size
            )
            for n, threads in layouts
        }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
