"""What a recipe trains: parts in full, LoRA adapters matched as peft matches them, peft's full copies."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from alt_text_recipes.data.errors import RecipeError
from alt_text_recipes.train.families import ModelFamily, family_of, part_module_names, trained_parts, within
from alt_text_recipes.train.modeling import lora_targets


@dataclass
class TrainingPlan:
    """What a recipe trains: parts in full, LoRA adapters on some linear layers, and beside adapters the
    modules peft keeps a trainable full copy of (which bitsandbytes leaves unquantized when in a part)."""

    family: ModelFamily
    full_parts: tuple[str, ...]
    adapters: set[str] = field(default_factory=set)  # linear modules that get an adapter
    full_copies: set[str] = field(default_factory=set)  # modules peft copies (modules_to_save), with descendants
    unquantized: set[str] = field(default_factory=set)  # modules of the parts trained in full, with descendants


def is_lora_target(name: str, module: torch.nn.Module, targets: list[str] | str, output_layer) -> bool:
    """Whether peft puts an adapter on this module (only linear layers are counted)."""
    if not isinstance(module, torch.nn.Linear):
        return False
    if isinstance(targets, str):
        if targets.lower() == "all-linear":
            return module is not output_layer
        return re.fullmatch(targets, name) is not None
    return any(name == target or name.endswith("." + target) for target in targets)


def _in_modules_to_save(name: str, modules_to_save: list[str]) -> bool:
    return any(re.match(rf"(^|.*\.){module}($|\..*)", name) for module in modules_to_save)  # as peft matches them


def training_plan(model, script_args, model_args) -> TrainingPlan:
    family = family_of(model)
    parts = trained_parts(getattr(script_args, "train_modules", None), model_args.use_peft)
    plan = TrainingPlan(family, parts)
    if not model_args.use_peft:
        return plan
    part_modules = part_module_names(model, family, parts)
    modules_to_save = list(model_args.lora_modules_to_save or [])
    targets = lora_targets(model, model_args)
    output_layer = model.get_output_embeddings()
    for name, module in model.named_modules():
        if within(name, part_modules):
            plan.unquantized.add(name)
        if within(name, part_modules) or _in_modules_to_save(name, modules_to_save):
            plan.full_copies.add(name)
        elif is_lora_target(name, module, targets, output_layer):
            plan.adapters.add(name)
    if not plan.adapters:
        raise RecipeError(
            f"the LoRA targets {targets!r} match no linear layer outside the parts trained in full "
            f"(--train_modules {' '.join(parts) or '(none)'}): peft would have no adapter to add."
        )
    return plan
