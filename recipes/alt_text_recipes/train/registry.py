"""The recipes, in one place: each one's name, technique and the defaults it sets.

A recipe's defaults sit over the project's common ones (the field defaults of
`training_arguments.AltTextTrainingArguments`, and `config.COMMON_DEFAULTS` for the model); a YAML preset and then
the command line override both. The entry scripts (`recipes/full_ft.py`, ...) and the tools that parse a
recipe's arguments without running it (the estimator, the experiment runner, the tests) read them here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from alt_text_recipes.data.errors import RecipeError


@dataclass(frozen=True)
class Recipe:
    name: str
    technique: str
    defaults: dict[str, Any] = field(default_factory=dict)
    single_run: bool = True  # one training run: estimated by recipes/estimate.py and run by the experiment matrix


RECIPES = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            "full_ft",
            "full fine-tuning: every weight trained (or the parts --train_modules names)",
            {"learning_rate": 1e-5, "optim": "adamw_bnb_8bit", "output_dir": "outputs/full_ft"},
        ),
        Recipe(
            "lora",
            "LoRA: the base frozen, low-rank adapters trained",
            {"use_peft": True, "learning_rate": 2e-4, "optim": "adamw_torch_fused", "output_dir": "outputs/lora"},
        ),
        Recipe(
            "qlora",
            "QLoRA: the base loaded in 4-bit NF4 and frozen, LoRA adapters trained in bf16",
            {
                "use_peft": True,
                "load_in_4bit": True,
                "bnb_4bit_quant_type": "nf4",
                "learning_rate": 2e-4,
                "optim": "paged_adamw_8bit",
                "output_dir": "outputs/qlora",
            },
        ),
        Recipe(
            "two_stage",
            "two stages: the connector alone, then the connector with LoRA on the language model",
            {"learning_rate": 2e-4, "optim": "adamw_torch_fused", "output_dir": "outputs/two_stage"},
            single_run=False,
        ),
    )
}
SINGLE_RUN_RECIPES = tuple(name for name, recipe in RECIPES.items() if recipe.single_run)
# What a run made to be measured (benchmarks, the experiment matrix, gpu-check) adds to a recipe's arguments:
# the loss and the memory breakdown at every step, nothing reported to a tracker.
MEASURED_RUN_FLAGS = ["--logging_steps", "1", "--memory_report_steps", "1", "--report_to", "none"]


def recipe_defaults(name: str) -> dict[str, Any]:
    """The flags recipe `name` sets over the common defaults (a fresh dict: callers may change it)."""
    if name not in RECIPES:
        raise RecipeError(f"unknown recipe '{name}'; choose one of {', '.join(RECIPES)}.")
    return {"recipe": name, **RECIPES[name].defaults}
