"""What differs between vision-language model families, declared once per family: one module of this
package per family (blip2.py, idefics2.py, llava.py), each declaring `FAMILY = ModelFamily(...)`.

Every recipe loads any model that `AutoModelForImageTextToText` + `AutoProcessor` support; a family says
only what the shared code cannot guess:

  prompt        "bare": the caption follows the image tokens directly (BLIP-2, which was pre-trained that
                way); "chat": the processor's chat template with the image and an instruction in a user
                turn, the caption as the assistant's answer (Idefics, LLaVA).
  parts         parameter-name prefixes of the vision tower, the connector (what maps image features into
                the language model: BLIP-2's Q-Former, query tokens and projection; Idefics2's perceiver
                resampler and projection; LLaVA's MLP projector) and the language model (with its output
                layer). `--train_modules` names these parts.
  lora_targets  the default LoRA targets: a list of module names, or a regex peft matches against full
                module names, kept off the vision tower.
  fsdp_wrap     the layer classes FSDP wraps as units (accelerate_configs/ lists them per family).
  end_of_turn   a token that ends the assistant's answer (and stops generation) besides EOS.
  layer_stacks  per model type, the estimator's layer arithmetic (estimator.layer_stacks calls it).
  twins         its tiny twins in data/models/ (data/make_tiny_models.py builds them; tests, the experiment
                runner's CPU rehearsals and random-weights models stand on them).
  shipped_configs  real models whose configs ship in data/model_configs/<last part of the id>.
  accelerate_configs  the FSDP accelerate configs written for it (they list its fsdp_wrap classes).
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from alt_text_recipes.data.errors import RecipeError

PARTS = ("vision", "connector", "language")
DEFAULT_INSTRUCTION = "Write alt text for this image."

# Attention and MLP projections of Llama/Mistral-style decoders (and of Idefics2's perceiver).
DECODER_PROJECTIONS = "q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj"


def within(name: str, prefixes) -> bool:
    """Whether a parameter or module name is one of `prefixes` or lies inside one."""
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


@dataclass(frozen=True)
class Twin:
    """A tiny model of a family's architecture, embedded in the repository."""

    name: str  # how tests, benchmarks and evaluations call it: "blip2-opt"
    folder: str  # relative to the repository root: "data/models/tiny-blip2-opt"
    builds: str  # data/make_tiny_models.py's name for it (`--only opt`)
    model_type: str  # the config's model_type: which real models it stands in for...
    encoder_decoder: bool = False  # ...and whether their language model is an encoder-decoder (BLIP-2 + T5)

    def stands_in_for(self, config) -> bool:
        """Whether its tokenizer and processor fit a real model of this config (random_weights)."""
        text = config.get_text_config()
        return config.model_type == self.model_type and bool(text.is_encoder_decoder) == self.encoder_decoder


# (config, caption tokens, prompt tokens, image processor settings) -> (layer stacks, loss length)
StackBuilder = Callable[..., tuple[list, int]]


@dataclass(frozen=True)
class ModelFamily:
    name: str
    model_types: tuple[str, ...]
    prompt: str  # "bare" or "chat"
    parts: dict[str, tuple[str, ...]]
    lora_targets: dict[str, list[str] | str]  # keyed by the language model's model_type ("*": any)
    fsdp_wrap: tuple[str, ...]
    end_of_turn: str | None = None
    layer_stacks: dict[str, StackBuilder] = field(default_factory=dict)  # keyed by model_type
    twins: tuple[Twin, ...] = ()
    shipped_configs: tuple[str, ...] = ()  # Hub ids
    accelerate_configs: tuple[str, ...] = ()  # relative to the repository root

    @property
    def uses_chat_template(self) -> bool:
        return self.prompt == "chat"

    def part_of(self, parameter_name: str) -> str:
        """The part a (base-model) parameter or module name belongs to: vision, connector, language or other."""
        for part, prefixes in self.parts.items():
            if within(parameter_name, prefixes):
                return part
        return "other"

    def default_lora_targets(self, text_model_type: str) -> list[str] | str:
        targets = self.lora_targets.get(text_model_type, self.lora_targets.get("*"))
        if targets is None:
            raise RecipeError(
                f"no default LoRA targets for a {self.name} model with language model '{text_model_type}'; pass "
                f"--lora_target_modules (defaults known: {self.lora_targets})."
            )
        return targets


def _declared_families() -> dict[str, ModelFamily]:
    """The `FAMILY` of every module in this package: adding a family is adding a module. Imported here, after
    ModelFamily and the helpers they use are defined, since the family modules import them from this package."""
    modules = [importlib.import_module(f"{__name__}.{info.name}") for info in pkgutil.iter_modules(__path__)]
    return {module.FAMILY.name: module.FAMILY for module in modules}


FAMILIES = _declared_families()
TWINS = {twin.name: twin for family in FAMILIES.values() for twin in family.twins}


def family_of(model_or_config) -> ModelFamily:
    """The family of a model (or its config); unknown architectures fail with the list of supported ones."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    known = ", ".join(t for f in FAMILIES.values() for t in f.model_types)
    raise RecipeError(
        f"model type '{model_type}' has no family adapter (supported: {known}); add one as a "
        "module of recipes/alt_text_recipes/train/families/."
    )


def base_model_of(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def parse_train_modules(value: list[str] | str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    """`--train_modules vision connector` or `--train_modules connector,language` -> the part names, checked."""
    if value is None:
        return default
    items = [value] if isinstance(value, str) else list(value)
    names = [name.strip() for item in items for name in item.split(",") if name.strip()]
    unknown = [name for name in names if name not in PARTS]
    if unknown:
        raise RecipeError(f"--train_modules {' '.join(unknown)}: not a part; choose from {', '.join(PARTS)}.")
    return tuple(part for part in PARTS if part in names)


def trained_parts(train_modules: list[str] | str | None, use_peft: bool) -> tuple[str, ...]:
    """`--train_modules`, defaulting to every part for full fine-tuning and none beside LoRA adapters."""
    return parse_train_modules(train_modules, default=() if use_peft else PARTS)


def freeze_all_but(model: torch.nn.Module, family: ModelFamily, parts: tuple[str, ...]) -> None:
    """Full fine-tuning of some parts: every parameter outside them stops taking gradients."""
    if not parts:
        raise RecipeError("--train_modules names no part: nothing would be trained.")
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(family.part_of(name) in parts)


def part_module_names(model: torch.nn.Module, family: ModelFamily, parts: tuple[str, ...]) -> list[str]:
    """The top-most modules of `parts` (for peft's modules_to_save)."""
    modules = dict(model.named_modules())
    names = []
    for part in parts:
        for prefix in family.parts[part]:
            if prefix in modules:
                names.append(prefix)
    return names


def bare_parameters(model: torch.nn.Module, family: ModelFamily, parts: tuple[str, ...]) -> list[str]:
    """Parameters of `parts` that no module holds (BLIP-2's query tokens): peft cannot save them with adapters."""
    modules, parameters = dict(model.named_modules()), dict(model.named_parameters())
    return [
        prefix for part in parts for prefix in family.parts[part] if prefix not in modules and prefix in parameters
    ]


def targets_within(targets: list[str] | str, family: ModelFamily, parts: tuple[str, ...]) -> str:
    """A regex matching what `targets` matches, but only inside `parts` (peft full-matches it)."""
    if isinstance(targets, str):
        pattern = targets
    else:
        pattern = r"(?:.*\.)?(?:" + "|".join(re.escape(name) for name in targets) + ")"
    prefixes = [re.escape(prefix) for part in parts for prefix in family.parts[part]]
    return rf"(?=(?:{'|'.join(prefixes)})(?:\.|$))(?:{pattern})"


def trainable_by_part(model: torch.nn.Module, family: ModelFamily) -> dict[str, tuple[int, int]]:
    """{part: (trainable, total)} parameters, adapters counted in the part they sit in."""
    counts: dict[str, list[int]] = {part: [0, 0] for part in (*PARTS, "other")}
    seen: set[int] = set()
    for name, parameter in base_model_of(model).named_parameters():
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        part = family.part_of(_strip_peft_infixes(name))
        counts[part][1] += parameter.numel()
        if parameter.requires_grad:
            counts[part][0] += parameter.numel()
    return {part: (trainable, total) for part, (trainable, total) in counts.items() if total}


def _strip_peft_infixes(name: str) -> str:
    # modules_to_save wraps a module as `<name>.modules_to_save.default` / `<name>.original_module`.
    return re.sub(r"\.(modules_to_save\.default|original_module)(?=\.|$)", "", name)


def describe_trainable(model: torch.nn.Module, family: ModelFamily, parts: tuple[str, ...], adapters: bool) -> str:
    lines = [
        f"trainable parameters by part ({family.name}; --train_modules "
        f"{' '.join(parts) if parts else '(none)'}{'; + LoRA adapters' if adapters else ''}):"
    ]
    for part, (trainable, total) in trainable_by_part(model, family).items():
        how = "trained in full" if part in parts else ("LoRA adapters" if trainable else "frozen")
        lines.append(f"  {part:<10} {trainable:>14,} of {total:>14,}  {how}")
    return "\n".join(lines)
