"""The project's defaults, as field defaults of typed argument classes (as TRL's `SFTConfig` subclasses
`TrainingArguments`): `AltTextTrainingArguments` for the Trainer, `AltTextModelConfig` for the model.

The defaults are what a single-GPU user of a real BLIP-2 wants. Each recipe's own differences are subclasses
of these in `registry.py`; a YAML preset and then the command line override them. A setting that must follow
from another (persistent DataLoader workers need workers) is changed in `__post_init__`, and the change is
logged.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainingArguments
from transformers.trainer_utils import SaveStrategy, SchedulerType
from trl import ModelConfig

from alt_text_recipes.data.errors import RecipeError, require_folder, require_setting
from alt_text_recipes.data.input_pipeline import default_num_workers
from alt_text_recipes.data.logs import get_logger
from alt_text_recipes.outputs.metrics import is_lower_better

logger = get_logger(__name__)

# We keep the conventional `--gradient_checkpointing` flag (a deprecated alias of
# `--activation_checkpointing` in recent transformers; both work and the newer one wins).
warnings.filterwarnings(
    "ignore", message="`(is_)?gradient_checkpointing(_kwargs)?` is deprecated", category=FutureWarning
)


def _has_accelerator() -> bool:
    return (
        torch.cuda.is_available()
        or (hasattr(torch, "xpu") and torch.xpu.is_available())
        or torch.backends.mps.is_available()
    )


def project_default(base: type, name: str, value: Any = None, factory: Any = None) -> Any:
    """Field `name` of the dataclass `base` (its help and choices kept) with our default: `value`, or
    `factory()` when the parser is built (mutable values, and values that depend on the machine)."""
    # Not nargs/const: the parser derives them from the new default.
    metadata = {
        key: base.__dataclass_fields__[name].metadata[key]
        for key in ("help", "choices")
        if key in base.__dataclass_fields__[name].metadata
    }
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=value, metadata=metadata)


def check_ranges(training_args: TrainingArguments) -> None:
    """What TrainingArguments leaves unchecked: a batch of 0 fails deep in torch, a negative learning rate
    trains the wrong way without a word."""
    for flag in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        require_setting(getattr(training_args, flag) >= 1, flag, getattr(training_args, flag), "give at least 1")
    for flag in ("learning_rate", "weight_decay", "dataloader_num_workers"):
        require_setting(getattr(training_args, flag) >= 0, flag, getattr(training_args, flag), "give 0 or more")
    require_setting(
        training_args.max_steps > 0 or training_args.num_train_epochs > 0,
        "num_train_epochs",
        training_args.num_train_epochs,
        "give a positive number of epochs, or a number of optimizer steps with --max_steps",
    )
    require_folder("output_dir", training_args.output_dir)


def check_hardware(training_args: Any) -> None:
    """Options that need a GPU fail here, before any weights load, when none is visible."""
    if _has_accelerator():
        return
    if not training_args.use_cpu:
        raise RecipeError(
            "--use_cpu false asks for a GPU, and this machine has none visible (CUDA_VISIBLE_DEVICES, "
            "drivers?). Drop it to train on the CPU."
        )
    if training_args.fp16:
        raise RecipeError(
            "--fp16 needs a GPU, and this machine has none visible; on the CPU use --bf16 (or neither, for fp32)."
        )


@dataclass
class AltTextTrainingArguments(TrainingArguments):
    """Every Trainer flag, with the defaults of the project's recipes."""

    bf16: bool = project_default(TrainingArguments, "bf16", True)
    # The old name, not `activation_checkpointing`: a preset's `gradient_checkpointing: false` must still win.
    gradient_checkpointing: bool | None = project_default(TrainingArguments, "gradient_checkpointing", True)
    gradient_checkpointing_kwargs: dict[str, Any] | str | None = project_default(
        TrainingArguments, "gradient_checkpointing_kwargs", factory=lambda: {"use_reentrant": False}
    )
    per_device_train_batch_size: int = project_default(TrainingArguments, "per_device_train_batch_size", 8)
    per_device_eval_batch_size: int = project_default(TrainingArguments, "per_device_eval_batch_size", 8)
    num_train_epochs: float = project_default(TrainingArguments, "num_train_epochs", 2)
    lr_scheduler_type: SchedulerType | str = project_default(TrainingArguments, "lr_scheduler_type", "cosine")
    warmup_steps: float = project_default(TrainingArguments, "warmup_steps", 0.03)
    logging_steps: float = project_default(TrainingArguments, "logging_steps", 10)
    save_strategy: SaveStrategy | str = project_default(TrainingArguments, "save_strategy", "epoch")
    save_total_limit: int | None = project_default(TrainingArguments, "save_total_limit", 2)
    report_to: None | str | list[str] = project_default(TrainingArguments, "report_to", "none")
    # Without a GPU the same command still runs, on the CPU (bf16 there is CPU autocast).
    use_cpu: bool = project_default(TrainingArguments, "use_cpu", factory=lambda: not _has_accelerator())
    # The input pipeline runs in DataLoader worker processes (alt_text_recipes/data/input_pipeline.py), started once
    # per run
    # rather than once per epoch. Left to the interpreter's exit, persistent workers stall 5 s each (torch 2.13,
    # accelerate 1.15); AltTextTrainer.train shuts them down when training ends (0.1 s). Off when there are no
    # workers (--dataloader_num_workers 0), where torch refuses it.
    dataloader_num_workers: int = project_default(
        TrainingArguments, "dataloader_num_workers", factory=default_num_workers
    )
    dataloader_persistent_workers: bool = project_default(TrainingArguments, "dataloader_persistent_workers", True)
    # The filter tests every step's loss for NaN on the host, a device sync per step; a NaN loss is better seen
    # in the log than averaged away.
    logging_nan_inf_filter: bool = project_default(TrainingArguments, "logging_nan_inf_filter", False)

    # The collator reads the raw image/text columns (the Trainer must not drop them) and makes `labels`.
    remove_unused_columns: bool = project_default(TrainingArguments, "remove_unused_columns", False)
    label_names: list[str] | None = project_default(TrainingArguments, "label_names", factory=lambda: ["labels"])

    def __post_init__(self) -> None:
        check_ranges(self)
        require_setting(
            not self.remove_unused_columns, "remove_unused_columns", True, "the collator reads the raw columns"
        )
        if self.dataloader_num_workers == 0 and self.dataloader_persistent_workers:
            logger.info("--dataloader_persistent_workers false: there are no workers (--dataloader_num_workers 0)")
            self.dataloader_persistent_workers = False
        if self.greater_is_better is None and is_lower_better(self.metric_for_best_model):
            logger.info(
                f"--greater_is_better false: --metric_for_best_model {self.metric_for_best_model} is best at 0"
            )
            self.greater_is_better = False
        super().__post_init__()
        check_hardware(self)
        if self.hub_token:
            # The Hub client reads it from the environment; kept out of the arguments, it is never written
            # (training_args.bin, checkpoints) or printed.
            logger.info("--hub_token: handed to the Hub client as HF_TOKEN, and kept out of the saved arguments")
            os.environ["HF_TOKEN"] = self.hub_token
            self.hub_token = None


@dataclass
class AltTextModelConfig(ModelConfig):
    """trl's ModelConfig (model, dtype, LoRA, quantization) with the project's defaults: a real BLIP-2 in bf16."""

    model_name_or_path: str | None = project_default(ModelConfig, "model_name_or_path", "Salesforce/blip2-opt-2.7b")
    dtype: str | None = project_default(ModelConfig, "dtype", "bfloat16")
