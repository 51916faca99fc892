"""Throughput: our training path against plain PyTorch loops, side by side in one run.

    python benchmarks/throughput.py --image_format png --image_size 64 --images 300 --epochs 2 --repeats 2 \\
        --out benchmarks/results/throughput-cpu/results.json                                 # CPU, tiny model
    python benchmarks/matmul_probe.py --out probe.json                                       # GPU peak, for MFU
    python benchmarks/throughput.py --config recipes/configs/throughput/opt27b_bf16_full.yaml \\
        --model_config data/model_configs/blip2-opt-2.7b --peak_json probe.json \\
        --out benchmarks/results/throughput-h100/results.json                                # GPU, real size

1. Input pipeline alone, on --images generated photos (640×480 JPEGs, or --image_size N×N, --image_format png):
   the plain pattern (the data set decodes each photo in the main process, the processor resizes and
   normalises it in the training step) against ours (recipes/alt_text_recipes/data/input_pipeline.py: draft-mode
   decoding and
   resizing in DataLoader workers), in images/s, at the model's input size and at 224² (real BLIP-2) when
   that differs.
2. Training on the same model, photos, batch and precision, each variant in a fresh process (so peak
   memory is its own), --repeats times interleaved (the median is reported, every run kept):
   - `plain`: the loop BLIP-2 fine-tuning tutorials write (fp32 load then cast, eager attention, default
     AdamW, processor in the step, `.item()` every step);
   - `plain_fair`: a straightforward PyTorch loop doing our recipe's math on the same prepared data (a
     DataLoader with the same workers and collator, SDPA, fused AdamW, the same schedule and gradient
     clipping, no host sync until the end): what the Trainer's own overhead is measured against;
   - `ours`: our recipe's Trainer (the preset as a user runs it), and optionally ours with --torch_compile.
   With --epochs every variant trains that many epochs and the whole run is timed, so worker start-up
   per epoch, end-of-epoch work, logging, the memory report and the progress bar count; without it,
   --steps after --warmup_steps. Steps/s, samples/s, peak memory, model FLOP/s and, given the device's
   measured peak, MFU. Model FLOPs per sample = 3 × the forward FLOPs counted by torch's FlopCounterMode
   (vision encoder, Q-Former, language model), the full fine-tuning convention; recomputation from
   activation checkpointing is not counted. MFU divides model FLOP/s by the device's dense bf16 peak as
   `benchmarks/matmul_probe.py` measured it on the same device (--peak_json probe.json, or --peak_tflops);
   without one, MFU is n/a (a datasheet peak is not what the device reaches).

--model_config takes a shipped real config (weights cannot be downloaded offline) and makes a random-weights
skeleton of it with the tiny twin's tokenizer (recipes/alt_text_recipes/train/random_weights.py): both loops draw the
weights on the device in the training dtype, so nothing is written to disk; the shapes, and so the speed and
memory, are the real model's.
--variants picks the loops (gpu_check trains plain_fair and ours: the fair ratio, the model drawn twice).
Writes a table and the ratios (`input_pipeline_speedup`, `train_speedup` = ours ÷ plain,
`fair_train_speedup` = ours ÷ plain_fair) to stdout and JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader

from alt_text_recipes.data.input_pipeline import default_num_workers, prepare_for_training
from alt_text_recipes.data.paths import EMBEDDED_DATASET
from alt_text_recipes.data.sources import load_caption_dataset
from alt_text_recipes.train.collators import Blip2Collator
from alt_text_recipes.train.modeling import load_processor
from alt_text_recipes.train.random_weights import build_random_model
from alt_text_recipes.train.training_arguments import AltTextModelConfig

# Siblings, found as gpu_check.py finds its own (this script's folder is first on sys.path when it runs by path):
# the training loops and the fresh-process run of one variant, and the report.
from throughput_loops import plain_batches, run_variant
from throughput_report import add_flops, add_ratios, peak_tflops, report, write_results

REPO_ROOT = Path(__file__).resolve().parents[1]

DEFAULT_PRESET = "recipes/configs/tiny/full_ft.yaml"
REAL_BLIP2_IMAGE_SIZE = 224


# ---------------------------------------------------------------- data and model
def make_photos(
    folder: Path, count: int, seed: int = 0, size: tuple[int, int] = (640, 480), image_format: str = "jpeg"
) -> Path:
    """`count` "photos" of `size` (smooth colour fields, shapes, sensor noise; JPEG or PNG) with food
    captions, as an imagefolder `train` split; captions are the embedded data set's, repeated."""
    captions = [
        json.loads(line)["text"]
        for line in (REPO_ROOT / EMBEDDED_DATASET / "train/metadata.jsonl").read_text().splitlines()
    ]
    rng = np.random.default_rng(seed)
    split = folder / "train"
    split.mkdir(parents=True, exist_ok=True)
    width, height = size
    scale = max(width, height) / 640
    suffix = "png" if image_format == "png" else "jpg"
    rows = []
    for index in range(count):
        image = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).resize(
            (width, height), Image.BICUBIC
        )
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
            r = max(2, int(rng.integers(20, 120) * scale))
            draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        noisy = np.asarray(image).astype(np.int16) + rng.integers(-12, 12, (height, width, 3))
        name = f"photo_{index:04d}.{suffix}"
        pixels = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
        pixels.save(split / name, **({"quality": 90} if suffix == "jpg" else {}))
        rows.append({"file_name": name, "text": captions[index % len(captions)]})
    (split / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


# ---------------------------------------------------------------- 1. input pipeline
def our_batches(prepared, collator, batch_size: int, workers: int):
    """Ours, as the recipes' Trainer builds it: prepared rows, collated in the DataLoader workers."""
    yield from DataLoader(
        prepared, batch_size=batch_size, num_workers=workers, collate_fn=collator, pin_memory=torch.cuda.is_available()
    )


def images_per_second(batches) -> float:
    start, images = time.perf_counter(), 0
    for batch in batches:
        images += batch["pixel_values"].shape[0]
    return images / (time.perf_counter() - start)


def measure_input_pipeline(photos: Path, model_folder: str, batch_size: int, workers: int) -> list[dict]:
    """Images/s of one pass over the photos: plain; ours decoding in the workers every epoch
    (--cache_images false); ours with the cache (the default): building it, then each later epoch."""
    dataset = load_caption_dataset(str(photos))["train"]
    processor = load_processor(model_folder)
    sizes = [processor.image_processor.size["height"]]
    if sizes[0] != REAL_BLIP2_IMAGE_SIZE:
        sizes.append(REAL_BLIP2_IMAGE_SIZE)
    rows = []
    for size in sizes:
        processor.image_processor.size = {"height": size, "width": size}
        collator = Blip2Collator(processor, is_encoder_decoder=False)
        plain = images_per_second(plain_batches(dataset, collator, batch_size))
        in_workers = images_per_second(
            our_batches(prepare_for_training(dataset, processor), collator, batch_size, workers)
        )
        start = time.perf_counter()
        cached = prepare_for_training(dataset, processor, cache=True, num_proc=workers)
        build_seconds = time.perf_counter() - start
        cached_epoch = images_per_second(our_batches(cached, collator, batch_size, workers))
        first_epoch = len(dataset) / (build_seconds + len(dataset) / cached_epoch)
        rows.append(
            {
                "image_size": size,
                "images": len(dataset),
                "workers": workers,
                "plain_images_per_s": plain,
                "workers_images_per_s": in_workers,
                "cached_first_epoch_images_per_s": first_epoch,
                "cached_epoch_images_per_s": cached_epoch,
                "workers_speedup": in_workers / plain,
                "first_epoch_speedup": first_epoch / plain,
                "speedup": cached_epoch / plain,
            }
        )
    return rows


# ---------------------------------------------------------------- 2. training (the loops: throughput_loops.py)
def measure_training(args: argparse.Namespace, model_folder: str, photos: Path) -> dict[str, dict]:
    """Each variant in a fresh process, `--repeats` times, interleaved (plain, plain_fair, ours, ...; again):
    the run with the median samples/s stands for the variant, every run's samples/s is kept."""
    variants = [*args.variants] + (["ours_compiled"] if args.compile else [])
    runs: dict[str, list[dict]] = {variant: [] for variant in variants}
    for repeat in range(args.repeats):
        for variant in variants:
            command = [
                sys.executable,
                __file__,
                "--variant",
                variant,
                "--model_folder",
                model_folder,
                "--photos",
                str(photos),
                "--config",
                args.config,
                "--recipe",
                args.recipe,
                "--batch_size",
                str(args.batch_size),
                "--steps",
                str(args.steps),
                "--warmup_steps",
                str(args.warmup_steps),
                "--workers",
                str(args.workers),
                "--epochs",
                str(args.epochs or 0),
            ]
            print(f"training: {variant} (run {repeat + 1} of {args.repeats}) ...", flush=True)
            finished = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
            if finished.returncode != 0:
                sys.exit(f"the {variant} run failed:\n{finished.stderr[-4000:]}")
            runs[variant].append(json.loads(finished.stdout.strip().splitlines()[-1]))
    results = {}
    for variant, variant_runs in runs.items():
        ordered = sorted(variant_runs, key=lambda run: run["samples_per_s"])
        results[variant] = {
            **ordered[(len(ordered) - 1) // 2],
            "samples_per_s_runs": [run["samples_per_s"] for run in variant_runs],
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_PRESET, help="the recipe preset to measure")
    parser.add_argument("--recipe", default=None, help="full_ft or lora (default: the preset's, else full_ft)")
    parser.add_argument(
        "--model_config",
        default=None,
        help="build random weights from this shipped config folder (e.g. data/model_configs/blip2-opt-2.7b) "
        "instead of loading the preset's model",
    )
    parser.add_argument("--images", type=int, default=300, help="generated photos")
    parser.add_argument("--image_size", type=int, default=None, help="generated photos are N×N (default: 640×480)")
    parser.add_argument("--image_format", choices=["jpeg", "png"], default="jpeg", help="of the generated photos")
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epoch mode: every variant trains this many epochs over all the photos and the whole run "
        "is timed (worker start per epoch and end-of-epoch work count); ours as a user runs the "
        "preset (its logging, the memory report, the progress bar). Default: --steps after "
        "--warmup_steps, with logging and the memory report turned down",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs of each variant, interleaved; the median is reported"
    )
    parser.add_argument("--batch_size", type=int, default=None, help="default: the preset's")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per variant")
    parser.add_argument("--warmup_steps", type=int, default=5, help="untimed steps first")
    parser.add_argument(
        "--workers", type=int, default=default_num_workers(), help="DataLoader workers (ours, plain_fair)"
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=["plain", "plain_fair", "ours"],
        default=["plain", "plain_fair", "ours"],
        help="the loops to train (ours and at least one plain loop: the FLOPs are counted in a plain one)",
    )
    parser.add_argument("--compile", action="store_true", help="also measure ours with --torch_compile")
    parser.add_argument(
        "--peak_tflops",
        type=float,
        default=None,
        help="the device's dense bf16 peak for MFU, TFLOP/s (default: --peak_json's; neither: MFU n/a)",
    )
    parser.add_argument(
        "--peak_json",
        default=None,
        help="the JSON benchmarks/matmul_probe.py wrote on this device: its bf16_tflops is the MFU peak",
    )
    parser.add_argument("--out", default=None, help="write the JSON here")
    # internal: one training variant in a fresh process
    parser.add_argument("--variant", choices=["plain", "plain_fair", "ours", "ours_compiled"], help=argparse.SUPPRESS)
    parser.add_argument("--model_folder", help=argparse.SUPPRESS)
    parser.add_argument("--photos", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.variant:
        return run_variant(args)
    if "ours" not in args.variants or args.variants == ["ours"]:
        parser.error("--variants: ours and at least one plain loop")

    import yaml

    preset = yaml.safe_load((REPO_ROOT / args.config).read_text())
    args.recipe = args.recipe or preset.get("recipe") or "full_ft"
    if args.recipe not in ("full_ft", "lora"):
        sys.exit("the plain loop is written for full fine-tuning and LoRA presets (--recipe full_ft or lora).")
    args.batch_size = args.batch_size or preset.get("per_device_train_batch_size", 8)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        size = (args.image_size, args.image_size) if args.image_size else (640, 480)
        photo_kind = f"{size[0]}×{size[1]} {args.image_format.upper()}"
        print(f"generating {args.images} {photo_kind} photos ...", flush=True)
        photos = make_photos(scratch / "photos", args.images, size=size, image_format=args.image_format)
        model_folder = (
            preset.get("model_name_or_path", AltTextModelConfig.model_name_or_path)
            if not args.model_config
            else str(build_random_model(args.model_config, scratch / "model", weights=False))
        )
        print("input pipeline ...", flush=True)
        input_rows = measure_input_pipeline(photos, model_folder, args.batch_size, args.workers)
        training = measure_training(args, model_folder, photos)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    peak, peak_source = peak_tflops(args.peak_tflops, args.peak_json)
    per_sample = add_flops(training, args.batch_size, peak)
    result = {
        "device": device,
        "model": args.model_config or model_folder,
        "config": args.config,
        "recipe": args.recipe,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "epochs": args.epochs,
        "photos": photo_kind,
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "input_pipeline": input_rows,
        "training": training,
        "model_flops_per_sample": per_sample,
        "peak_tflops": peak,
        "peak_source": peak_source,
        "input_pipeline_speedup": input_rows[0]["speedup"],
        "seconds": time.perf_counter() - started,
    }
    add_ratios(result, training)
    print(report(result))
    if args.out:
        write_results(result, Path(args.out))


if __name__ == "__main__":
    main()
