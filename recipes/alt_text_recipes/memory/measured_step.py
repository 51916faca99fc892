"""One real training step at real width, measured part by part beside the estimator's prediction.

The estimator is arithmetic over the model's shapes; the tiny twins are too narrow to test it (their
memory is mostly the Python process). Here the model has the real widths, vocabulary and sequence
lengths of a shipped config with only a few layers per stack (`random_weights.build_random_model`), and
one optimizer step runs through the recipe's own Trainer. Measured, per part:

  params, grads, optimizer  the storages of the tensors themselves (the memory report's figures);
  activations per stack     what autograd saves for backward while each stack's layers run
                            (saved-tensor hooks, unique storages, parameters excluded); under activation
                            checkpointing, what the forward pass keeps plus one layer recomputed (that
                            layer run again, alone, on the inputs it had, with checkpointing off);
  outside                   everything saved outside the stacks: embeddings, final norms, the output
                            layer and the loss over the vocabulary.

The estimate is made for the same reduced config and the same sequence lengths (taken from the batch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from alt_text_recipes.data.paths import REPO_ROOT
from alt_text_recipes.memory.estimator import GB, Stack, estimate, layer_stacks
from alt_text_recipes.memory.measured import MemoryBreakdownCallback, SavedActivationMeter
from alt_text_recipes.train.arguments import parse_recipe_args
from alt_text_recipes.train.families import base_model_of
from alt_text_recipes.train.loop import build_trainer
from alt_text_recipes.train.modeling import load_config
from alt_text_recipes.train.registry import MEASURED_RUN_FLAGS

PARTS = ("params", "grads", "optimizer")
CAPTION = "a white plate of pasta with basil and tomatoes on a wooden table"
# What every measured step shares: one optimizer step, nothing else (no workers, evaluation or saving).
STEP_FLAGS = [
    "--max_steps",
    "1",
    *MEASURED_RUN_FLAGS,
    *"--save_strategy no --eval_strategy no --dataloader_num_workers 0 --fast_inputs false".split(),
    *"--caption_metrics false --lr_scheduler_type constant --warmup_steps 0".split(),
]


def write_caption_folder(folder: Path, count: int, size: int = 378) -> Path:
    """An imagefolder of `count` photos (noise, so nothing compresses away), all with the same caption."""
    train = folder / "train"
    train.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    with open(train / "metadata.jsonl", "w") as metadata:
        for index in range(count):
            pixels = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=generator).numpy()
            Image.fromarray(pixels).save(train / f"{index}.png")
            metadata.write(json.dumps({"file_name": f"{index}.png", "text": CAPTION}) + "\n")
    return folder


@dataclass
class StepComparison:
    case: str
    estimated: dict[str, float]  # GB per part and per stack
    measured: dict[str, float]
    details: dict = field(default_factory=dict)

    def ratios(self) -> dict[str, float]:
        """measured ÷ estimated per part (infinite where something was measured and nothing estimated)."""
        return {
            part: self.measured[part] / self.estimated[part] if self.estimated[part] > 0 else float("inf")
            for part in self.estimated
            if self.estimated[part] > 0 or self.measured[part] > 0
        }

    def worst(self) -> tuple[str, float]:
        """The part furthest from its estimate, and measured ÷ estimated for it."""
        ratios = self.ratios()
        part = max(ratios, key=lambda name: abs(ratios[name] - 1) if ratios[name] > 0 else float("inf"))
        return part, ratios[part]


def stack_layers(model: torch.nn.Module, stack: Stack) -> list[torch.nn.Module]:
    module = base_model_of(model).get_submodule(stack.modules)
    return list(module) if isinstance(module, torch.nn.ModuleList) else [module]


class FirstCallRecorder:
    """Keeps the arguments of a module's first call (to run it again alone)."""

    def __init__(self, module: torch.nn.Module):
        self.module, self.args, self.kwargs = module, None, None
        self._handle = module.register_forward_pre_hook(self._record, with_kwargs=True)

    def input_storages(self) -> set[int]:
        """The storages of the recorded inputs (held here, so no later tensor can take their addresses)."""
        tensors = [value for value in (*self.args, *self.kwargs.values()) if isinstance(value, torch.Tensor)]
        return {tensor.untyped_storage().data_ptr() for tensor in tensors}

    def _record(self, module, args, kwargs):
        if self.args is None:
            self.args, self.kwargs = args, kwargs
        self._handle.remove()


def recomputed_layer_bytes(recorder: FirstCallRecorder, bf16: bool, already_kept: set[int], device: str) -> int:
    """What one checkpointed layer adds when backward recomputes it: the layer run again, checkpointing off,
    less its inputs, which the checkpoint kept (a recomputation re-reads them, it does not copy them)."""
    layer = recorder.module
    meter = SavedActivationMeter(layer, exclude=already_kept)
    checkpointing = getattr(layer, "gradient_checkpointing", False)
    layer.gradient_checkpointing = False
    meter.start()
    try:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            layer(*recorder.args, **recorder.kwargs)
    finally:
        layer.gradient_checkpointing = checkpointing
    return meter.stop()


def batch_lengths(trainer) -> tuple[int, int]:
    """(caption tokens with EOS, prompt tokens besides the image's) of the first training batch."""
    batch = next(iter(trainer.get_train_dataloader()))
    labels = batch["labels"][0]
    caption = int((labels != -100).sum())
    model = base_model_of(trainer.model)
    if model.config.get_text_config().is_encoder_decoder:
        return caption, 1 if trainer.data_collator.prompt else 0
    image_token = getattr(model.config, "image_token_id", None) or model.config.image_token_index
    ids = batch["input_ids"][0]
    padding = int((batch["attention_mask"][0] == 0).sum())
    return caption, ids.numel() - padding - caption - int((ids == image_token).sum())


def measure_step(
    case: str, model_folder: str, recipe: str, flags: list[str], data_folder: str, device: str = "cpu"
) -> StepComparison:
    """Run one optimizer step of `recipe` on `model_folder` (on the CPU or this machine's GPU) and compare
    each part with the estimate."""
    args = [
        "--model_name_or_path",
        model_folder,
        "--dataset_name",
        data_folder,
        "--output_dir",
        str(Path(data_folder) / "out"),
        *STEP_FLAGS,
        "--use_cpu",
        str(device == "cpu").lower(),
        *flags,
    ]
    script_args, training_args, model_args = parse_recipe_args(recipe, args)
    config = load_config(model_folder, shipped_first=True)
    stacks, _ = layer_stacks(config, 1, 1)
    trainer = build_trainer(script_args, training_args, model_args)
    memory = next(c for c in trainer.callback_handler.callbacks if isinstance(c, MemoryBreakdownCallback))
    memory.regions = lambda model: {stack.name: stack_layers(model, stack) for stack in stacks}
    recorders = {
        stack.name: FirstCallRecorder(stack_layers(trainer.model, stack)[0])
        for stack in stacks
        if stack.checkpointed and training_args.gradient_checkpointing
    }
    caption_tokens, prompt_tokens = batch_lengths(trainer)
    trainer.train()
    report = memory.reports[-1]

    predicted = estimate(script_args, training_args, model_args, caption_tokens, prompt_tokens, device=device)
    estimated = {"params": predicted.params_gb, "grads": predicted.grads_gb, "optimizer": predicted.optimizer_gb}
    measured = {"params": report.params / GB, "grads": report.grads / GB, "optimizer": report.optimizer / GB}
    by_stack = predicted.parts["activations_by_part_gb"]
    for stack in stacks:
        saved = report.activations_by_region.get(stack.name, 0)
        recorder = recorders.get(stack.name)
        if recorder is not None and recorder.args is not None:
            saved += recomputed_layer_bytes(recorder, training_args.bf16, recorder.input_storages(), device)
        estimated[f"act:{stack.name}"], measured[f"act:{stack.name}"] = by_stack[stack.name], saved / GB
    estimated["act:outside"] = by_stack["outside"]
    measured["act:outside"] = report.activations_by_region.get("outside", 0) / GB
    modes = predicted.parts["stack_modes"]
    return StepComparison(
        case,
        estimated,
        measured,
        {
            "caption_tokens": caption_tokens,
            "prompt_tokens": prompt_tokens,
            "stack_modes": modes,
            "loss": trainer.state.log_history[0].get("loss"),
        },
    )


def table(comparisons: list[StepComparison]) -> str:
    """Markdown: one row per case and part, estimate vs measured (MB) and their ratio."""
    lines = ["| case | part | estimated MB | measured MB | measured ÷ estimated |", "|---|---|---|---|---|"]
    for comparison in comparisons:
        ratios = comparison.ratios()
        for part in comparison.estimated:
            estimated, measured = comparison.estimated[part] * 1024, comparison.measured[part] * 1024
            ratio = f"{ratios[part]:.3f}" if part in ratios else "-"
            lines.append(f"| {comparison.case} | {part} | {estimated:.3f} | {measured:.3f} | {ratio} |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Case:
    """One measured step: a recipe with its precision and activation checkpointing."""

    recipe: str  # full_ft, lora or qlora
    dtype: str  # the weights': float32 or bfloat16
    bf16: bool  # bf16 autocast
    checkpointing: bool
    optim: str | None = None  # default: the recipe's

    @property
    def name(self) -> str:
        precision = {
            ("float32", False): "fp32",
            ("float32", True): "bf16-mixed",
            ("bfloat16", True): "bf16",
            ("bfloat16", False): "bf16-weights",
        }[(self.dtype, self.bf16)]
        return (
            f"{self.recipe} {precision}{' ckpt' if self.checkpointing else ''}{' ' + self.optim if self.optim else ''}"
        )

    def flags(self, batch_size: int) -> list[str]:
        flags = [
            "--per_device_train_batch_size",
            str(batch_size),
            "--dtype",
            self.dtype,
            "--bf16",
            str(self.bf16).lower(),
            "--gradient_checkpointing",
            str(self.checkpointing).lower(),
        ]
        return flags + (["--optim", self.optim] if self.optim else [])


def measure_cases(
    model: str, cases: list[Case], work_dir: Path, layers: int | None = 2, batch_size: int = 2, device: str = "cpu"
) -> list[StepComparison]:
    """Build `model` (a shipped config) at real width with `layers` layers per stack and measure each case;
    a model folder (a tiny twin) is measured as it is."""
    from alt_text_recipes.train.random_weights import build_random_model

    if (Path(model) / "model.safetensors").is_file() or (REPO_ROOT / model / "model.safetensors").is_file():
        folder, label = Path(model), Path(model).name
    else:
        folder = build_random_model(
            model, work_dir / f"{model.split('/')[-1]}-{layers}-layers", layers=layers, dtype="float32", device=device
        )
        label = model.split("/")[-1]
    data = write_caption_folder(work_dir / "data", batch_size)
    return [
        measure_step(f"{label} {case.name}", str(folder), case.recipe, case.flags(batch_size), str(data), device)
        for case in cases
    ]
