"""`transformers.TrainingArguments` with this project's defaults, as TRL's configs (`SFTConfig`, ...) do it.

The defaults are what a single-GPU user of a real BLIP-2 wants; the settings derived from the arguments alone
(the collator's columns, persistent workers only with workers, the hardware checks, the Hub token) are made in
`__post_init__`, so every way of building the arguments gets them. Recipe defaults (`registry.py`), a YAML
preset and the command line override the field defaults, in that order.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainingArguments
from transformers.trainer_utils import SaveStrategy, SchedulerType

from alt_text_recipes.data.errors import RecipeError, require_folder, require_setting
from alt_text_recipes.data.input_pipeline import default_num_workers

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


def _project_default(name: str, value: Any = None, factory: Any = None) -> Any:
    """TrainingArguments' field `name` (its help kept) with our default: `value`, or `factory()` when the parser
    is built (mutable values, and values that depend on the machine)."""
    # Only the help: the parser derives the rest (nargs, const) from the new default.
    metadata = {"help": TrainingArguments.__dataclass_fields__[name].metadata["help"]}
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

    bf16: bool = _project_default("bf16", True)
    # The old name, not `activation_checkpointing`: a preset's `gradient_checkpointing: false` must still win.
    gradient_checkpointing: bool | None = _project_default("gradient_checkpointing", True)
    gradient_checkpointing_kwargs: dict[str, Any] | str | None = _project_default(
        "gradient_checkpointing_kwargs", factory=lambda: {"use_reentrant": False}
    )
    per_device_train_batch_size: int = _project_default("per_device_train_batch_size", 8)
    per_device_eval_batch_size: int = _project_default("per_device_eval_batch_size", 8)
    num_train_epochs: float = _project_default("num_train_epochs", 2)
    lr_scheduler_type: SchedulerType | str = _project_default("lr_scheduler_type", "cosine")
    warmup_steps: float = _project_default("warmup_steps", 0.03)
    logging_steps: float = _project_default("logging_steps", 10)
    save_strategy: SaveStrategy | str = _project_default("save_strategy", "epoch")
    save_total_limit: int | None = _project_default("save_total_limit", 2)
    report_to: None | str | list[str] = _project_default("report_to", "none")
    # Without a GPU the same command still runs, on the CPU (bf16 there is CPU autocast).
    use_cpu: bool = _project_default("use_cpu", factory=lambda: not _has_accelerator())
    # The input pipeline runs in DataLoader worker processes (alt_text_recipes/data/input_pipeline.py), started once
    # per run
    # rather than once per epoch. Left to the interpreter's exit, persistent workers stall 5 s each (torch 2.13,
    # accelerate 1.15); AltTextTrainer.train shuts them down when training ends (0.1 s). Off when there are no
    # workers (--dataloader_num_workers 0), where torch refuses it.
    dataloader_num_workers: int = _project_default("dataloader_num_workers", factory=default_num_workers)
    dataloader_persistent_workers: bool = _project_default("dataloader_persistent_workers", True)
    # The filter tests every step's loss for NaN on the host, a device sync per step; a NaN loss is better seen
    # in the log than averaged away.
    logging_nan_inf_filter: bool = _project_default("logging_nan_inf_filter", False)

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.dataloader_num_workers == 0:
            self.dataloader_persistent_workers = False
        super().__post_init__()
        check_hardware(self)
        # The collator reads the raw image/text columns: the Trainer must not drop them.
        self.remove_unused_columns = False
        self.label_names = ["labels"]
        if (self.metric_for_best_model or "").endswith("distance"):
            self.greater_is_better = False  # the embedding distance: 0 is best
        if self.hub_token:
            # The Hub client reads it from the environment; kept out of the arguments, it is never written
            # (training_args.bin, checkpoints) or printed.
            os.environ["HF_TOKEN"] = self.hub_token
            self.hub_token = None
