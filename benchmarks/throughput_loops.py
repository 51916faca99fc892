"""The training loops `benchmarks/throughput.py` times, each run in a fresh process (`run_variant`, reached through
the entry point's hidden --variant flag, prints one JSON line): `plain`, the loop BLIP-2 fine-tuning tutorials write
(fp32 load then cast, eager attention, default AdamW, the processor in the step, `.item()` every step);
`plain_fair`, a straightforward PyTorch loop doing our recipe's math on the same prepared data; and `ours`, the
recipe's Trainer as a user runs the preset (optionally with --torch_compile). Their shared helpers live here too:
the recipe arguments every loop parses, the step clock, steps/s and samples/s, and the forward FLOPs per model part
that the report turns into model FLOP/s and MFU.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForImageTextToText, TrainerCallback, get_scheduler, set_seed

from alt_text_recipes.data.input_pipeline import prepare_for_training
from alt_text_recipes.data.library_internals import attention_implementation
from alt_text_recipes.data.sources import load_caption_dataset
from alt_text_recipes.memory.measured import peak_memory
from alt_text_recipes.train.arguments import parse_recipe_args
from alt_text_recipes.train.collators import Blip2Collator, make_collator
from alt_text_recipes.train.loop import apply_lr_scaling, build_trainer
from alt_text_recipes.train.modeling import add_lora, is_encoder_decoder, load_processor
from alt_text_recipes.train.random_weights import instantiate, is_skeleton

PARTS = ("vision_model", "qformer", "language_projection", "language_model")


def plain_batches(dataset, collator, batch_size: int):
    """The plain pattern: rows decoded in the main process, the processor run on them in the step."""
    for start in range(0, len(dataset), batch_size):
        yield collator([dataset[index] for index in range(start, min(start + batch_size, len(dataset)))])


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
        return parse_recipe_args(args.recipe, recipe_arguments(args, model_folder, photos, output_dir) + list(extra))


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
        script_args, training_args, model_args = parse_recipe_args(args.recipe, cli)
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
        "attention": attention_implementation(trainer.model.config),
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
    collator = Blip2Collator(processor, is_encoder_decoder(model), script_args.prompt, script_args.max_caption_tokens)
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
