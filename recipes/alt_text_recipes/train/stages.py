"""The two-stage recipe LLaVA made standard, for every family.

Stage 1 (alignment): only the connector trains; the vision tower and the language model stay frozen, so
the image features learn to land where the language model can read them. Stage 2 starts from stage 1's
output: the connector keeps training in full and LoRA adapters train on the language model; the vision
tower stays frozen. Stage 1 writes `<output_dir>/stage1` (a full model folder: stage 2's base),
stage 2 `<output_dir>/stage2` (the adapter and the connector, on top of stage1).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerate import PartialState
from transformers import TrainingArguments
from trl import ModelConfig

from alt_text_recipes.data.errors import RecipeError, require_setting
from alt_text_recipes.data.logs import get_logger
from alt_text_recipes.train.arguments import ScriptArguments, parse_recipe_args
from alt_text_recipes.train.loop import TrainResult, leave_process_group, train

logger = get_logger(__name__)

STAGE1_PARTS = ["connector"]
STAGE2_PARTS = ["connector"]  # + LoRA adapters on the language model


@dataclass
class TwoStageArguments:
    """Stage 1's own settings; every other flag (--learning_rate, --max_steps, ...) is stage 2's, and
    stage 1's too unless overridden here."""

    stage1_learning_rate: float = field(
        default=1e-3,
        metadata={"help": "Stage 1 (connector only) learning rate; LLaVA-1.5 aligns its projector at 1e-3."},
    )
    stage1_max_steps: int | None = field(default=None, metadata={"help": "Stage 1 steps (default: --max_steps)."})
    stage1_num_train_epochs: float = field(default=1.0, metadata={"help": "Stage 1 epochs when no step count is set."})
    reuse_stage1: bool = field(
        default=True,
        metadata={
            "help": "When <output_dir>/stage1 already holds a finished stage 1 model, start stage 2 from it "
            "instead of training stage 1 again."
        },
    )

    def __post_init__(self) -> None:
        require_setting(
            self.stage1_learning_rate >= 0, "stage1_learning_rate", self.stage1_learning_rate, "give 0 or more"
        )
        require_setting(
            self.stage1_max_steps is None or self.stage1_max_steps >= 1,
            "stage1_max_steps",
            self.stage1_max_steps,
            "give at least 1 step (leave it out for --max_steps)",
        )
        require_setting(
            self.stage1_num_train_epochs > 0,
            "stage1_num_train_epochs",
            self.stage1_num_train_epochs,
            "give more than 0",
        )


def stage1_arguments(
    script_args: ScriptArguments,
    training_args: TrainingArguments,
    model_args: ModelConfig,
    options: TwoStageArguments,
    output_dir: Path,
) -> tuple:
    script = script_args.with_changes(train_modules=STAGE1_PARTS, show_examples=0)
    # The connector trains in full: no adapters and no 4-bit base in this stage.
    model = dataclasses.replace(model_args, use_peft=False, load_in_4bit=False, load_in_8bit=False)
    training = _training_copy(
        training_args,
        output_dir / "stage1",
        learning_rate=options.stage1_learning_rate,
        max_steps=options.stage1_max_steps if options.stage1_max_steps is not None else training_args.max_steps,
        num_train_epochs=options.stage1_num_train_epochs,
    )
    return script, training, model


def stage2_arguments(
    script_args: ScriptArguments,
    training_args: TrainingArguments,
    model_args: ModelConfig,
    stage1_dir: Path,
    output_dir: Path,
) -> tuple:
    script = script_args.with_changes(train_modules=STAGE2_PARTS)
    model = dataclasses.replace(model_args, model_name_or_path=str(stage1_dir), use_peft=True)
    training = _training_copy(training_args, output_dir / "stage2")
    return script, training, model


def _training_copy(training_args: TrainingArguments, output_dir: Path, **changes: Any) -> TrainingArguments:
    training = copy.deepcopy(training_args)
    training.output_dir = str(output_dir)
    for name, value in changes.items():
        setattr(training, name, value)
    return training


def is_finished_stage(folder: Path) -> bool:
    """A stage 1 folder the recipe finished: its config, weights and training state are there."""
    return (
        (folder / "config.json").exists()
        and (folder / "trainer_state.json").exists()
        and any(folder.glob("model*.safetensors"))
    )


def run_two_stage(recipe: str, args: list[str] | None = None) -> tuple[TrainResult | None, TrainResult]:
    script_args, training_args, model_args, options = parse_recipe_args(recipe, args, extra=(TwoStageArguments,))
    if script_args.train_modules:
        raise RecipeError(
            "--train_modules is fixed by the two stages (1: connector; 2: connector + LoRA on the "
            "language model); use full_ft.py or lora.py to choose parts yourself."
        )
    output_dir = Path(training_args.output_dir)
    stage1_dir = output_dir / "stage1"
    stage1 = None
    if options.reuse_stage1 and is_finished_stage(stage1_dir):
        logger.info(
            f"stage 1: {stage1_dir} holds a finished stage 1 model; starting stage 2 from it "
            "(--reuse_stage1 false to train it again)"
        )
    else:
        logger.info(f"stage 1 of 2: the connector aligns; vision tower and language model frozen -> {stage1_dir}")
        stage1 = train(*stage1_arguments(script_args, training_args, model_args, options, output_dir))
        PartialState().wait_for_everyone()  # the first process writes stage 1; the others load it next
    logger.info(
        f"stage 2 of 2: connector + LoRA on the language model, starting from {stage1_dir} -> {output_dir / 'stage2'}"
    )
    stage2 = train(*stage2_arguments(script_args, training_args, model_args, stage1_dir, output_dir))
    leave_process_group()  # after both stages: they share the process group
    return stage1, stage2
