"""The recipes, in one place: each one's name, technique and the defaults it sets differently.

The project's defaults are the field defaults of `AltTextTrainingArguments` and `AltTextModelConfig`
(training_arguments.py); a recipe's differences are the field defaults of its subclasses below, as TRL's
`SFTConfig` overrides `TrainingArguments`. A YAML preset and then the command line override both. The entry
scripts (`recipes/full_ft.py`, ...) and the tools that parse a recipe's arguments without running it (the
estimator, the experiment runner, the tests) name a recipe here.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import TrainingArguments
from transformers.training_args import OptimizerNames
from trl import ModelConfig

from alt_text_recipes.data.errors import RecipeError
from alt_text_recipes.train.training_arguments import AltTextModelConfig, AltTextTrainingArguments, project_default


@dataclass
class FullFineTuningArguments(AltTextTrainingArguments):
    learning_rate: float = project_default(TrainingArguments, "learning_rate", 1e-5)
    optim: OptimizerNames | str = project_default(TrainingArguments, "optim", "adamw_bnb_8bit")
    output_dir: str | None = project_default(TrainingArguments, "output_dir", "outputs/full_ft")


@dataclass
class LoraTrainingArguments(AltTextTrainingArguments):
    learning_rate: float = project_default(TrainingArguments, "learning_rate", 2e-4)
    optim: OptimizerNames | str = project_default(TrainingArguments, "optim", "adamw_torch_fused")
    output_dir: str | None = project_default(TrainingArguments, "output_dir", "outputs/lora")


@dataclass
class QloraTrainingArguments(LoraTrainingArguments):
    optim: OptimizerNames | str = project_default(TrainingArguments, "optim", "paged_adamw_8bit")
    output_dir: str | None = project_default(TrainingArguments, "output_dir", "outputs/qlora")


@dataclass
class TwoStageTrainingArguments(LoraTrainingArguments):
    output_dir: str | None = project_default(TrainingArguments, "output_dir", "outputs/two_stage")


@dataclass
class LoraModelConfig(AltTextModelConfig):
    use_peft: bool = project_default(ModelConfig, "use_peft", True)


@dataclass
class QloraModelConfig(LoraModelConfig):
    load_in_4bit: bool = project_default(ModelConfig, "load_in_4bit", True)
    bnb_4bit_quant_type: str = project_default(ModelConfig, "bnb_4bit_quant_type", "nf4")


@dataclass(frozen=True)
class Recipe:
    name: str
    technique: str
    training: type[AltTextTrainingArguments] = AltTextTrainingArguments
    model: type[AltTextModelConfig] = AltTextModelConfig
    single_run: bool = True  # one training run: estimated by recipes/estimate.py and run by the experiment matrix


RECIPES = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            "full_ft",
            "full fine-tuning: every weight trained (or the parts --train_modules names)",
            FullFineTuningArguments,
        ),
        Recipe("lora", "LoRA: the base frozen, low-rank adapters trained", LoraTrainingArguments, LoraModelConfig),
        Recipe(
            "qlora",
            "QLoRA: the base loaded in 4-bit NF4 and frozen, LoRA adapters trained in bf16",
            QloraTrainingArguments,
            QloraModelConfig,
        ),
        Recipe(
            "two_stage",
            "two stages: the connector alone, then the connector with LoRA on the language model",
            TwoStageTrainingArguments,
            single_run=False,
        ),
    )
}
SINGLE_RUN_RECIPES = tuple(name for name, recipe in RECIPES.items() if recipe.single_run)
# What a run made to be measured (benchmarks, the experiment matrix, gpu-check) adds to a recipe's arguments:
# the loss and the memory breakdown at every step, nothing reported to a tracker.
MEASURED_RUN_FLAGS = ["--logging_steps", "1", "--memory_report_steps", "1", "--report_to", "none"]
# Arguments parsed for no recipe (the project's defaults alone), as some tools and tests do.
NO_RECIPE = Recipe("", "the project's defaults")


def recipe_named(name: str | None) -> Recipe:
    """Recipe `name` (None: the project's defaults alone)."""
    if name is None:
        return NO_RECIPE
    if name not in RECIPES:
        raise RecipeError(f"unknown recipe '{name}'; choose one of {', '.join(RECIPES)}.")
    return RECIPES[name]
