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
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForImageTextToText, TrainerCallback, get_scheduler, set_seed

from alt_text_recipes.data.input_pipeline import default_num_workers, prepare_for_training
from alt_text_recipes.data.paths import EMBEDDED_DATASET
from alt_text_recipes.data.sources import load_caption_dataset
from alt_text_recipes.memory.measured import GB, peak_memory
from alt_text_recipes.train.arguments import COMMON_DEFAULTS, parse_recipe_args
from alt_text_recipes.train.collators import AltTextCollator, make_collator
from alt_text_recipes.train.loop import apply_lr_scaling, build_trainer
from alt_text_recipes.train.modeling import add_lora, is_encoder_decoder, load_processor
from alt_text_recipes.train.random_weights import build_random_model, instantiate, is_skeleton
from alt_text_recipes.train.registry import recipe_defaults

REPO_ROOT = Path(__file__).resolve().parents[1]

DEFAULT_PRESET = "recipes/configs/tiny/full_ft.yaml"
REAL_BLIP2_IMAGE_SIZE = 224
PARTS = ("vision_model", "qformer", "language_projection", "language_model")


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
def plain_batches(dataset, collator, batch_size: int):
    """The plain pattern: rows decoded in the main process, the processor run on them in the step."""
    for start in range(0, len(dataset), batch_size):
        yield collator([dataset[index] for index in range(start, min(start + batch_size, len(dataset)))])


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
        collator = AltTextCollator(processor, is_encoder_decoder=False)
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


# ---------------------------------------------------------------- 2. training
def forward_flops_by_part(model: torch.nn.Module, batch: dict) -> dict[str, int]:
    """Forward FLOPs of one batch per top-level part (vision_model, qformer, ...), counted by torch."""
    with FlopCounterMode(display=False, depth=2) as counter:
        model(**batch)  # with autograd on: the counter's module tracker needs it
    counts = counter.get_flop_counts()
    by_part = {}
    for name, per_op in counts.items():
        if name.count(".") == 1 and name.split(".")[-1] in PARTS:
            by_part[name.split(".")[-1]] = int(sum(per_op.values()))
    by_part["total"] = int(sum(counts["Global"].values()))
    return by_part


class StepClock(TrainerCallback):
    def __init__(self):
        self.times: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def recipe_arguments(args: argparse.Namespace, model_folder: str, photos: Path, output_dir: str) -> list[str]:
    common = [
        "--config",
        args.config,
        "--model_name_or_path",
        model_folder,
        "--dataset_name",
        str(photos),
        "--per_device_train_batch_size",
        str(args.batch_size),
        "--gradient_accumulation_steps",
        "1",
        "--save_strategy",
        "no",
        "--eval_strategy",
        "no",
        "--show_examples",
        "0",
        "--output_dir",
        output_dir,
        "--dataloader_num_workers",
        str(args.workers),
    ]
    if args.epochs:
        # As a user runs the preset: its logging steps, the memory report (steps 0, 1 and every 50), the progress bar.
        return common + ["--num_train_epochs", str(args.epochs), "--max_steps", "-1"]
    return common + [
        "--max_steps",
        str(args.warmup_steps + args.steps),
        "--memory_report_steps",
        "0",
        "--logging_steps",
        "1000000",
        "--disable_tqdm",
        "true",
    ]


def parsed_recipe(args: argparse.Namespace, model_folder: str, photos: Path, extra: tuple[str, ...] = ()) -> tuple:
    with tempfile.TemporaryDirectory() as output_dir:
        return parse_recipe_args(
            recipe_defaults(args.recipe), recipe_arguments(args, model_folder, photos, output_dir) + list(extra)
        )


def timing(args: argparse.Namespace, times: list[float], start: float, samples: int) -> dict:
    """Steps/s and samples/s: in epoch mode over the whole run (from before the optimizer is built to the
    end of the last epoch), else over the steps after the warm-up."""
    if args.epochs:
        seconds = times[-1] - start
        return {
            "steps_per_s": len(times) / seconds,
            "samples_per_s": samples / seconds,
            "seconds": seconds,
            "steps": len(times),
            "samples": samples,
        }
    seconds = times[-1] - times[args.warmup_steps - 1]
    return {
        "steps_per_s": args.steps / seconds,
        "samples_per_s": args.steps * args.batch_size / seconds,
        "seconds": seconds,
        "steps": args.steps,
        "samples": args.steps * args.batch_size,
    }


def train_ours(args: argparse.Namespace, model_folder: str, photos: Path, compile_model: bool) -> dict:
    with tempfile.TemporaryDirectory() as output_dir:
        cli = recipe_arguments(args, model_folder, photos, output_dir) + (
            ["--torch_compile", "true"] if compile_model else []
        )
        script_args, training_args, model_args = parse_recipe_args(recipe_defaults(args.recipe), cli)
        apply_lr_scaling(script_args, training_args)
        set_seed(training_args.seed)
        trainer = build_trainer(script_args, training_args, model_args)
        clock = StepClock()
        if not args.epochs:
            trainer.add_callback(clock)
        start = time.perf_counter()
        output = trainer.train()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        end = time.perf_counter()
    times = clock.times if not args.epochs else [end] * output.global_step
    samples = len(trainer.train_dataset) * int(args.epochs or 0)
    return {
        **timing(args, times, start, samples),
        "attention": trainer.model.config._attn_implementation,
        "optimizer": training_args.optim,
        "workers": training_args.dataloader_num_workers,
    }


def loop_model(
    model_folder: str,
    load_dtype: torch.dtype,
    dtype: torch.dtype,
    attention: str,
    device: torch.device,
    training_args,
    model_args,
):
    """The plain loops' model, in training mode on `device`: random weights drawn on the device for a
    skeleton, else read from the folder (in `load_dtype`, then cast), with checkpointing and LoRA as asked."""
    if is_skeleton(model_folder):
        model = instantiate(model_folder, load_dtype, attn_implementation=attention, device=device)
    else:
        model = AutoModelForImageTextToText.from_pretrained(
            model_folder, dtype=load_dtype, attn_implementation=attention
        )
    model = model.to(dtype)
    if training_args.gradient_checkpointing:
        model.gradient_checkpointing_enable({"use_reentrant": False})
    if model_args.use_peft:
        model = add_lora(model, model_args, training_args.gradient_checkpointing)
    return model.to(device).train()


def train_plain(args: argparse.Namespace, model_folder: str, photos: Path) -> dict:
    """The loop most BLIP-2 fine-tuning tutorials write, with the preset's dtype, batch and technique."""
    script_args, training_args, model_args = parsed_recipe(args, model_folder, photos)
    set_seed(training_args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, model_args.dtype) if model_args.dtype not in (None, "auto") else torch.float32
    # the tutorial's fp32 load, then a cast to the training dtype
    model = loop_model(model_folder, torch.float32, dtype, "eager", device, training_args, model_args)
    processor = load_processor(model_folder)
    collator = AltTextCollator(
        processor, is_encoder_decoder(model), script_args.prompt, script_args.max_caption_tokens
    )
    dataset = load_caption_dataset(str(photos))["train"].shuffle(seed=training_args.seed)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=training_args.bf16)
    start = time.perf_counter()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=training_args.learning_rate)
    steps = args.warmup_steps + args.steps if not args.epochs else None
    epochs = range(args.epochs) if args.epochs else iter(int, 1)
    times, first = [], None
    for _ in epochs:
        for batch in plain_batches(dataset, collator, args.batch_size):
            batch = {key: value.to(device) for key, value in batch.items()}
            first = first or batch
            with autocast:
                loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            loss.item()  # the per-step logging sync such loops have
            times.append(time.perf_counter())
            if steps and len(times) == steps:
                break
        if steps and len(times) == steps:
            break
    result = timing(args, times, start, len(dataset) * int(args.epochs or 0))
    with autocast:
        flops = forward_flops_by_part(model, first)
    return {
        **result,
        "attention": "eager",
        "optimizer": "torch.optim.AdamW defaults",
        "workers": 0,
        "forward_flops_per_batch": flops,
        "flops_batch_size": int(first["input_ids"].shape[0]),
    }


def train_plain_fair(args: argparse.Namespace, model_folder: str, photos: Path) -> dict:
    """A straightforward PyTorch loop doing our recipe's math on the same prepared data: the preset's dtype,
    SDPA, a DataLoader with the same workers and collator, the same optimizer (fused AdamW), learning-rate
    schedule and gradient clipping, and no host sync until the end (one `.item()` for the mean loss)."""
    script_args, training_args, model_args = parsed_recipe(args, model_folder, photos)
    set_seed(training_args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, model_args.dtype) if model_args.dtype not in (None, "auto") else torch.float32
    model = loop_model(model_folder, dtype, dtype, "sdpa", device, training_args, model_args)
    processor = load_processor(model_folder)
    collator = make_collator(processor, model, script_args.prompt, script_args.max_caption_tokens)
    dataset = prepare_for_training(
        load_caption_dataset(str(photos))["train"], processor, script_args.cache_images, args.workers
    )
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        collate_fn=collator,
        pin_memory=device.type == "cuda",
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=training_args.bf16)
    start = time.perf_counter()
    trainable = [p for p in model.parameters() if p.requires_grad]
    fused = training_args.optim == "adamw_torch_fused"
    optimizer = torch.optim.AdamW(
        trainable,
        lr=training_args.learning_rate,
        weight_decay=training_args.weight_decay,
        betas=(training_args.adam_beta1, training_args.adam_beta2),
        eps=training_args.adam_epsilon,
        fused=fused or None,
    )
    total = len(loader) * args.epochs if args.epochs else args.warmup_steps + args.steps
    scheduler = get_scheduler(training_args.lr_scheduler_type, optimizer, training_args.get_warmup_steps(total), total)
    epochs = range(args.epochs) if args.epochs else iter(int, 1)
    times, losses = [], []
    for _ in epochs:
        for batch in loader:
            batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
            with autocast:
                loss = model(**batch).loss
            loss.backward()
            if training_args.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(trainable, training_args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
            if not args.epochs:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                times.append(time.perf_counter())
            if len(losses) == total:
                break
        if len(losses) == total:
            break
    mean_loss = torch.stack(losses).mean().item()  # the one host sync
    if args.epochs:
        times = [time.perf_counter()] * len(losses)
    result = timing(args, times, start, len(dataset) * int(args.epochs or 0))
    with autocast:
        flops = forward_flops_by_part(model, batch)  # after the timing: the last batch, counted
    return {
        **result,
        "attention": "sdpa",
        "optimizer": "torch.optim.AdamW" + (" fused" if fused else ""),
        "workers": args.workers,
        "mean_loss": mean_loss,
        "forward_flops_per_batch": flops,
        "flops_batch_size": int(batch["input_ids"].shape[0]),
    }


TRAINERS = {"plain": train_plain, "plain_fair": train_plain_fair}


def run_variant(args: argparse.Namespace) -> None:
    """In a fresh process: one training variant; prints its JSON as the last line."""
    model_folder, photos = args.model_folder, Path(args.photos)
    if args.variant in TRAINERS:
        result = TRAINERS[args.variant](args, model_folder, photos)
    else:
        result = train_ours(args, model_folder, photos, compile_model=args.variant == "ours_compiled")
    peak, source = peak_memory()
    result.update({"peak_bytes": peak, "peak_source": source})
    print(json.dumps(result), flush=True)


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


# ---------------------------------------------------------------- report
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
            preset.get("model_name_or_path", COMMON_DEFAULTS["model_name_or_path"])
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
    print(report(result))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(f"`{result['command']}`\n\n{report(result)}\n")
        print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
