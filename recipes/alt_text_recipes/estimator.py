"""Predict a recipe's training memory before any weight is loaded.

The model is built from its configuration on the meta device (no memory, no download: the configs
of the four BLIP-2 variants, Idefics2-8B, Idefics3-8B-Llama3 and LLaVA-1.5-7B ship in
`data/model_configs/`), so parameter counts are exact. What trains follows the recipe, per model family
(recipes/alt_text_recipes/families/):

  full_ft     the parts named in `--train_modules` (vision, connector, language; default all three)
              train; every other parameter is frozen (no gradient, no optimizer state).
  lora/qlora  LoRA adapters on the family's default targets (or `--lora_target_modules`), matched as
              peft matches them: a list entry matches a module named so or ending in "." + entry, a
              string is `re.fullmatch`ed against the full module name, "all-linear" takes every linear
              layer but the output layer. A part named in `--train_modules` (and a module in
              `--lora_modules_to_save`) trains in full beside the adapters as peft's modules_to_save: a
              trainable copy next to the frozen original, no adapter inside it, and under 4-bit it is
              not quantized.

Then, per GPU, in bytes:

  params      = each parameter x the bytes of the dtype it is held in: `--dtype` (transformers keeps
                the modules a model lists in `_keep_in_fp32_modules` -- BLIP-2's Q-Former, T5's `wo` --
                in fp32 only for fp16 loads, not bf16); a 4-bit (QLoRA) linear weight takes 0.5 byte
                plus a 4-byte absmax per 64 weights, except the output layer, those fp32-listed modules
                and the parts trained in full, which are not quantized; `prepare_model_for_kbit_training`
                then puts every weight that is not 4-bit in fp32; LoRA adapters are fp32. A part trained
                in full beside adapters counts twice (frozen original and trainable copy).
  grads       = trainable parameters x their dtype's bytes.
  optimizer   = AdamW (torch): two moments in the parameter's dtype (8 B/param fp32, 4 B/param bf16);
                8-bit AdamW (bitsandbytes): 2 B/param + a 4-byte absmax per 256 for tensors of at least
                4096 elements, fp32 moments (8 B/param) below that and for embeddings (the Trainer
                keeps those in 32 bits); SGD without momentum: 0.
  activations = what autograd saves for backward, per micro-batch (recipes/alt_text_recipes/activations.py): per
                layer kind (ViT, SigLIP, CLIP, Q-Former, OPT, T5, Llama/Mistral, the perceiver and the
                projectors) the tensors its forward pass keeps, in s·h, s·f and attention-map units (s
                tokens, h wide, f MLP width), each in the dtype it is held in (the compute dtype, the
                residual stream's, fp32 copies made by RMS norms, dropout masks); a linear layer keeps its
                input only when its weight trains, an adapter keeps its own; under bf16 autocast over fp32
                weights every layer with gradients flowing keeps bf16 copies of its weights. A stack trained
                in full, with LoRA adapters, frozen with gradients passing back to something trained before
                it, or frozen with nothing trainable before it (saves nothing). Activation checkpointing
                keeps each layer's input plus one layer recomputed, for the layers transformers checkpoints
                (not Idefics2's perceiver and projection, nor LLaVA's projector). Outside the stacks: the
                fp32 log-probabilities over the vocabulary (s·V), final norms, the output layer's input,
                the patch embedding's pixels. tests/test_real_width.py checks each part within 10% of one
                measured step at real width.
  other       = allocator slack and temporaries: 10% of the above. On CPU the process itself
                (Python, torch and the libraries, measured in this process) is added, since a
                CPU run's peak is the whole process.

The layer stacks per family (each family module builds its own):

  BLIP-2      ViT over its patches + 1; the Q-Former over its query tokens (cross-attending to the
              patches); OPT over query tokens + prompt + caption, or T5's encoder over query tokens +
              prompt and its decoder over the caption.
  Idefics2    per image, the SigLIP tower over its patches, the projection MLP over the same patches and
              the perceiver over its latents (cross-attending to the patches); the language model over
              64 latents per image + prompt + caption. An image is assumed square at the processor's
              shortest_edge (378 px: 27² = 729 patches; larger photos up to 980 px make more patches),
              and one example is 5 images (4 crops + the whole) when the processor splits images
              (`do_image_splitting`, read from the processor config beside the model config or in the
              model's folder; the shipped idefics2-8b processor config splits).
  Idefics3    per sub-image the SigLIP tower over its patches (364 px / 14: 676) and the connector (pixel
              shuffle by scale_factor, then one linear projection over the 169 shuffled tokens); the
              language model over 169 tokens per sub-image + two tile tags per sub-image and a newline
              per row + prompt + caption. A square photo is resized to size.longest_edge (1456 px) and,
              when the processor splits (the shipped processor config does), cut into 4 x 4 tiles of
              max_image_size (364 px) plus the whole image: 17 sub-images.
  LLaVA       CLIP over 577 tokens (576 patches + class token); the projector and the language model
              over the 576 image tokens + prompt + caption.

  The prompt is one token (BOS) for BLIP-2; for chat families the instruction (about 1.3 tokens a
  word) plus about 16 tokens of chat template (turn markers, the tokens around the image).

Strategies divide as they do (which one, and from where -- --strategy, --deepspeed, --fsdp/--fsdp_config,
the accelerate config, --device_map -- is read by recipes/alt_text_recipes/strategies.py and said in the output): DDP
keeps a full copy per GPU plus gradient buckets (one more copy of the gradients); FSDP FULL_SHARD divides
params, grads and optimizer state by the GPU count and adds the largest wrapped unit (the family's FSDP
classes) gathered, SHARD_GRAD_OP keeps the params whole, HYBRID_* shard within a machine, CPU offload
leaves only the gathered units on the GPU; DeepSpeed ZeRO holds the params in bf16/fp16 when that is on,
fp32 master weights and moments (12 B/param) of 1/N of the trainable parameters, their fp32 gradients at
the step, and reduce buckets (reduce_bucket_size, "auto" = h², two with overlap_comm): stage 1 keeps the
full bf16 gradients, stage 2 1/N of them, stage 3 also 1/N of the params (bar those under the persistence
threshold) plus one module and the prefetch bucket gathered. With the optimizer offloaded, master weights,
moments and fp32 gradients (with gradient accumulation also a buffer in the training dtype) move to the
host, leaving the buckets on the GPU; with params offloaded (stage 3) their partitions move too.
Model parallel (`--device_map`, strategy model_parallel) splits the layers over the GPUs of one
machine as `plan_device_map` does for `--num_gpus` GPUs (default: those visible, or the devices of a
JSON map): the figure is the most loaded GPU's -- its parameters, their gradients and optimizer
state, and the activations of its layers (the logits on the GPU of the output layer). Weights that do
not fit on the GPUs count as host memory.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import resource
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, PretrainedConfig

from .activations import Precision, Stack, precision, rms_norm_bytes
from .activations import stack_bytes as layers_bytes
from .errors import RecipeError
from .families import (
    DEFAULT_INSTRUCTION,
    FAMILIES,
    ModelFamily,
    family_of,
    part_module_names,
    trained_parts,
    within,
)
from .modeling import lora_targets
from .parallel import parse_device_map, plan_device_map
from .paths import SHIPPED_CONFIGS, resolve_local, shipped_config
from .strategies import Strategy, requested_strategy

GB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 4, None: 4}
EIGHT_BIT_OPTIMIZERS = {"adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit", "adam8bit"}
STATELESS_OPTIMIZERS = {"sgd"}
CUDA_CONTEXT_GB = 0.5  # what the CUDA context and kernels take outside the allocator's count
CHAT_TEMPLATE_TOKENS = 16  # turn markers, end of utterance, the tokens around the image


@dataclass
class Estimate:
    model: str
    strategy: str
    num_gpus: int
    num_params: int
    trainable_params: int
    params_gb: float
    grads_gb: float
    optimizer_gb: float
    activations_gb: float
    other_gb: float
    total_gb: float
    host_gb: float
    gpu_memory_gb: float
    fits: bool
    device: str
    parts: dict = field(default_factory=dict)
    strategy_detail: str = (
        ""  # what the strategy keeps where, where it was read from, and whether the GPU count is assumed
    )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def table(self) -> str:
        rows = [
            ("params", self.params_gb),
            ("grads", self.grads_gb),
            ("optimizer state", self.optimizer_gb),
            ("activations", self.activations_gb),
            ("other", self.other_gb),
            ("total per GPU", self.total_gb),
        ]
        lines = [
            f"{self.model} | {self.strategy} on {self.num_gpus} GPU(s) | {self.num_params:,} parameters, "
            f"{self.trainable_params:,} trainable"
        ]
        if self.strategy_detail:
            lines.append(f"  strategy: {self.strategy_detail}")
        lines += [f"  {name:<16} {value:9.2f} GB" for name, value in rows]
        lines.append(f"  {'host (CPU) RAM':<16} {self.host_gb:9.2f} GB")
        verdict = "fits" if self.fits else "OOM"
        where = f"a {self.gpu_memory_gb:g} GB GPU" if self.device == "cuda" else "this CPU run"
        lines.append(f"  -> {verdict} on {where}")
        return "\n".join(lines)


def load_config(name_or_path: str) -> PretrainedConfig:
    """A model's configuration without its weights: shipped copy, local folder, or the Hub."""
    shipped = shipped_config(name_or_path)
    if shipped is not None:  # a local folder: no Hub request
        return AutoConfig.from_pretrained(shipped)
    return AutoConfig.from_pretrained(resolve_local(name_or_path))


@contextmanager
def _without_zero3_init():
    """TrainingArguments with a ZeRO-3 --deepspeed config register it globally, and transformers then builds
    every model under deepspeed.zero.Init; a meta-device model must be built plainly."""
    from transformers.integrations import deepspeed as hf_deepspeed

    registered = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = registered


def meta_model(config: PretrainedConfig) -> torch.nn.Module:
    with torch.device("meta"), _without_zero3_init():
        return AutoModelForImageTextToText.from_config(config)


def image_processor_settings(name_or_path: str) -> dict:
    """The image processor's saved settings (shipped beside the config, or in the model's folder); {} if none."""
    for folder in (SHIPPED_CONFIGS / name_or_path.split("/")[-1], Path(resolve_local(name_or_path))):
        if (folder / "processor_config.json").is_file():
            return json.loads((folder / "processor_config.json").read_text()).get("image_processor", {})
        if (folder / "preprocessor_config.json").is_file():
            return json.loads((folder / "preprocessor_config.json").read_text())
    return {}


# --- What trains --------------------------------------------------------------------------------------


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


# --- Weights, gradients, optimizer state --------------------------------------------------------------


@dataclass
class Weight:
    """One tensor as the run holds it: a parameter, a trainable copy of one, or a LoRA matrix."""

    name: str
    numel: int
    bytes: int
    part: str  # vision, connector, language, other, or lora
    trainable: bool
    kind: str = "base"  # base, copy (peft's modules_to_save) or adapter


def _in_fp32_module(name: str, keep_in_fp32: list[str]) -> bool:
    return any(part in keep_in_fp32 for part in name.split("."))


def _is_quantized_linear(name: str, module: torch.nn.Module, keep_in_fp32: list[str], output_layer) -> bool:
    return (
        isinstance(module, torch.nn.Linear) and module is not output_layer and not _in_fp32_module(name, keep_in_fp32)
    )


def _parameter_bytes(name: str, numel: int, quantize: bool, model_args, keep_in_fp32: list[str]) -> int:
    if quantize:
        return numel // 2 + 4 * math.ceil(numel / 64)  # packed NF4 + absmax per block of 64
    if model_args.load_in_4bit or (model_args.dtype == "float16" and _in_fp32_module(name, keep_in_fp32)):
        return 4 * numel
    return DTYPE_BYTES[model_args.dtype] * numel


def _adapter_weights(module_name: str, module: torch.nn.Linear, rank: int) -> list[Weight]:
    # A (r x in) and B (out x r), which peft keeps in fp32
    return [
        Weight(
            f"{module_name}.lora_A", rank * module.in_features, 4 * rank * module.in_features, "lora", True, "adapter"
        ),
        Weight(
            f"{module_name}.lora_B",
            module.out_features * rank,
            4 * module.out_features * rank,
            "lora",
            True,
            "adapter",
        ),
    ]


def weight_tensors(model, model_args, plan: TrainingPlan) -> list[Weight]:
    """Every tensor the run holds for the model, with its bytes and whether it trains."""
    keep_in_fp32 = list(getattr(model, "_keep_in_fp32_modules", None) or [])
    output_layer = model.get_output_embeddings()
    weights: list[Weight] = []
    seen: set[int] = set()  # tied weights (embeddings and output layer) count once
    for module_name, module in model.named_modules():
        quantize = (
            bool(model_args.load_in_4bit)
            and module_name not in plan.unquantized
            and _is_quantized_linear(module_name, module, keep_in_fp32, output_layer)
        )
        for param_name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            name = f"{module_name}.{param_name}" if module_name else param_name
            size = _parameter_bytes(name, param.numel(), quantize and param_name == "weight", model_args, keep_in_fp32)
            part = plan.family.part_of(name)
            weights.append(
                Weight(name, param.numel(), size, part, not model_args.use_peft and part in plan.full_parts)
            )
            if module_name in plan.full_copies:
                weights.append(Weight(name, param.numel(), size, part, True, "copy"))
        if module_name in plan.adapters:
            weights += _adapter_weights(module_name, module, model_args.lora_r)
    return weights


def trainable_tensors(weights: list[Weight]) -> list[tuple[str, int, int]]:
    """(name, numel, bytes per element) of each trainable tensor."""
    return [(w.name, w.numel, w.bytes // w.numel) for w in weights if w.trainable]


def optimizer_bytes(
    trainable: list[tuple[str, int, int]], optim: str, embedding_weights: set[str] = frozenset()
) -> int:
    if optim in STATELESS_OPTIMIZERS:
        return 0
    if optim in EIGHT_BIT_OPTIMIZERS:
        total = 2 * 256 * 4  # the two quantization maps, shared by every tensor
        for name, numel, _ in trainable:
            # The Trainer keeps embeddings' state in 32 bits; bitsandbytes does for tensors under 4096.
            if numel >= 4096 and name not in embedding_weights:
                total += 2 * numel + 2 * 4 * math.ceil(numel / 256)
            else:
                total += 8 * numel
        return total
    # torch AdamW: exp_avg and exp_avg_sq in the parameter's dtype, and a 4-byte step per tensor.
    return sum(2 * numel * size + 4 for _, numel, size in trainable)


def embedding_weight_names(model) -> set[str]:
    return {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, torch.nn.Embedding)}


# --- Activations ----------------------------------------------------------------------------------------


# Each family's layer arithmetic lives in its module (recipes/alt_text_recipes/families/<family>.py).
STACK_BUILDERS = {
    model_type: builder for family in FAMILIES.values() for model_type, builder in family.layer_stacks.items()
}


def layer_stacks(
    config, caption_tokens: int, prompt_tokens: int, image_processor: dict | None = None
) -> tuple[list[Stack], int]:
    """The model's layer stacks in forward order, and the length the loss runs over."""
    builder = STACK_BUILDERS.get(config.model_type)
    if builder is None:
        raise RecipeError(
            f"the memory estimator has no layer arithmetic for '{config.model_type}' models yet "
            f"(it knows {', '.join(STACK_BUILDERS)})."
        )
    return builder(config, caption_tokens, prompt_tokens, image_processor)


def prompt_token_count(family: ModelFamily, script_args) -> int:
    """Tokens before the caption besides the image's: BLIP-2's BOS; a chat turn with the instruction."""
    if not family.uses_chat_template:
        return 1
    instruction = getattr(script_args, "prompt", "") or DEFAULT_INSTRUCTION
    return math.ceil(1.3 * len(instruction.split())) + CHAT_TEMPLATE_TOKENS


def stack_modes(stacks: list[Stack], plan: TrainingPlan) -> list[str]:
    """full, lora, through (frozen, gradients pass back to something trained before it) or frozen (saves nothing)."""
    modes, upstream = [], False
    for stack in stacks:
        if stack.part in plan.full_parts:
            mode = "full"
        elif any(within(name, [stack.modules]) for name in plan.adapters):
            mode = "lora"
        else:
            mode = "through" if upstream else "frozen"
        upstream = upstream or mode != "frozen"
        modes.append(mode)
    return modes


def precision_of(model_args, training_args, device: str) -> Precision:
    return precision(
        DTYPE_BYTES[model_args.dtype],
        bool(training_args.bf16 or training_args.fp16),
        bool(model_args.load_in_4bit or model_args.load_in_8bit),
        device,
    )


def stack_bytes(
    stack: Stack, mode: str, model_args, training_args, device: str, layers: int | None = None, entry: bool = False
) -> float:
    """What one stack (or `layers` of its layers) saves for backward, for one micro-batch."""
    return layers_bytes(
        stack,
        mode,
        precision_of(model_args, training_args, device),
        training_args.gradient_checkpointing,
        model_args.attn_implementation == "eager",
        training_args.per_device_train_batch_size,
        layers,
        entry,
    )


def outside_bytes(
    config, stacks: list[Stack], modes: list[str], loss_seq: int, model_args, training_args, device: str
) -> float:
    """What is saved outside the layer stacks, per micro-batch: the fp32 log-probabilities over the vocabulary
    (the loss's backward), the language model's final norm and output layer input, the vision tower's patch
    embedding and final norm, dropout on the embeddings."""
    p = precision_of(model_args, training_args, device)
    text = config.get_text_config()
    batch = training_args.per_device_train_batch_size
    saved = 4.0 * loss_seq * text.vocab_size
    mode = dict(zip([stack.name for stack in stacks], modes, strict=False))
    for stack in stacks:
        if mode[stack.name] == "frozen":
            continue
        seq_width = stack.seq * stack.hidden * stack.per_example
        if stack.part == "language":  # final norm, embedding dropout
            full = mode[stack.name] == "full"
            saved += (
                rms_norm_bytes(seq_width, p, full, stack.kind == "t5")
                if stack.kind in ("llama", "t5")
                else seq_width * p.residual
            )
            # dropout after the embeddings (kept only when they train) and, T5, after the final norm
            masks = (2 if full else 1) if stack.kind == "t5" else (1 if full else 0)
            saved += seq_width * p.mask * masks if stack.dropout else 0
        elif stack.part == "vision":  # the norm after (or, CLIP, before) the layers
            saved += seq_width * p.residual
            if config.model_type == "blip-2":  # its output, which the norm keeps again for the pooled token
                saved += seq_width * p.residual
            if mode[stack.name] == "full":  # the patch embedding keeps the pixels
                side = config.vision_config.image_size
                saved += 3 * side * side * p.compute * stack.per_example
        elif stack.kind == "qformer":  # the query tokens' LayerNorm and dropout; the projection's input
            saved += stack.seq * stack.hidden * (p.mask if stack.dropout else 0)
            saved += stack.seq * stack.hidden * p.compute if mode[stack.name] == "full" else 0
        elif stack.kind == "perceiver":  # its final RMS norm
            saved += rms_norm_bytes(stack.seq * stack.hidden * stack.per_example, p, mode[stack.name] == "full")
    language = [stack for stack in stacks if stack.part == "language"][-1]
    if mode[language.name] == "full":  # the output layer's input
        saved += loss_seq * language.hidden * p.compute
    output_fp32 = model_args.dtype in (None, "auto", "float32") or model_args.load_in_4bit or model_args.load_in_8bit
    if p.autocast and output_fp32 and mode[language.name] != "frozen":  # the output layer's bf16 weight copy
        saved += 2 * text.vocab_size * language.hidden / batch
    return batch * saved


def activation_bytes(
    config, stacks: list[Stack], modes: list[str], loss_seq: int, model_args, training_args, device: str = "cuda"
) -> dict[str, float]:
    entry = next((index for index, mode in enumerate(modes) if mode != "frozen"), None)  # where gradients start
    # (T5's decoder starts again from token embeddings)
    result = {
        stack.name: stack_bytes(
            stack, mode, model_args, training_args, device, entry=index == entry or stack.name == "language_decoder"
        )
        for index, (stack, mode) in enumerate(zip(stacks, modes, strict=False))
    }
    result["outside"] = outside_bytes(config, stacks, modes, loss_seq, model_args, training_args, device)
    return result


def fp32_weight(name: str, module: torch.nn.Module, model, model_args) -> bool:
    """Whether a linear layer's weight is held in fp32: with fp32 weights, all; under 4/8-bit, those left
    unquantized (prepare_model_for_kbit_training puts them in fp32); with bf16 weights, none."""
    if model_args.load_in_4bit or model_args.load_in_8bit:
        return not _is_quantized_linear(
            name, module, getattr(model, "_keep_in_fp32_modules", None) or [], model.get_output_embeddings()
        )
    return model_args.dtype in (None, "auto", "float32")


def describe_model_facts(model, stacks: list[Stack], plan: TrainingPlan, model_args, modes: list[str]) -> None:
    """What the arithmetic needs from the built model: each layer's linear weights (bf16 copies under
    autocast) and the adapters in one layer (their input widths)."""
    for stack in stacks:
        layer = model.get_submodule(stack.modules)
        first = f"{stack.modules}.0" if isinstance(layer, torch.nn.ModuleList) else stack.modules
        layer = layer[0] if isinstance(layer, torch.nn.ModuleList) else layer
        stack.fp32_linear_weights = sum(
            module.weight.numel()
            for name, module in layer.named_modules(prefix=first)
            if isinstance(module, torch.nn.Linear) and fp32_weight(name, module, model, model_args)
        )
        # the perceiver's key/value projections read [patches; latents], every other projection the layer's tokens
        stack.adapters = [
            (
                module.in_features,
                stack.kv_seq
                if stack.kind == "perceiver" and name.rsplit(".", 1)[-1] in ("k_proj", "v_proj")
                else stack.seq,
            )
            for name, module in layer.named_modules(prefix=first)
            if name in plan.adapters
        ]
        stack.lora_rank, stack.lora_dropout = model_args.lora_r, model_args.lora_dropout > 0
        # BLIP-2's Q-Former reads the image patches that a vision tower with gradients keeps anyway
        stack.kv_input_kept = stack.kind == "qformer" and modes[0] != "frozen"


# --- Model parallel ---------------------------------------------------------------------------------------


@contextmanager
def _quiet(logger_name: str):
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def planned_device_map(model, device_map: str | None, num_gpus: int, gpu_memory_gb: float, dtype: str | None) -> dict:
    """The split `--device_map` asks for: a JSON map as given, else the one `plan_device_map` computes."""
    value = parse_device_map(device_map)
    if isinstance(value, dict):
        return value
    dtype = dtype if dtype in ("float32", "bfloat16", "float16") else "float32"
    with _quiet("accelerate.utils.modeling"):  # it warns that this machine has none of the planned GPUs
        return plan_device_map(model, num_gpus, gpu_memory_gb, dtype=dtype, balanced=value != "sequential")


def device_map_gpus(device_map: str | None) -> int:
    """GPUs a model-parallel run uses when --num_gpus is not given: a JSON map's, else those visible."""
    value = parse_device_map(device_map)
    if isinstance(value, dict):
        return len({device for device in value.values() if isinstance(device, int)})
    return torch.cuda.device_count()


def device_of(name: str, device_map: dict):
    """The device of a parameter or module name: the deepest map entry that contains it."""
    key = name
    while key not in device_map:
        if not key:
            raise RecipeError(f"the device map places no module holding '{name}'.")
        key = key.rsplit(".", 1)[0] if "." in key else ""
    return device_map[key]


def module_device(model, module_name: str, device_map: dict):
    first_parameter = next(name for name, _ in model.get_submodule(module_name).named_parameters())
    return device_of(f"{module_name}.{first_parameter}" if module_name else first_parameter, device_map)


def layers_per_device(model, stack: Stack, device_map: dict) -> Counter:
    module = model.get_submodule(stack.modules)
    names = (
        [f"{stack.modules}.{index}" for index in range(len(module))]
        if isinstance(module, torch.nn.ModuleList)
        else [stack.modules]
    )
    return Counter(module_device(model, name, device_map) for name in names)


def per_device_load(
    model,
    config,
    weights: list[Weight],
    stacks: list[Stack],
    modes: list[str],
    loss_seq: int,
    device_map: dict,
    model_args,
    training_args,
) -> dict:
    """{device: {"params", "grads", "optimizer", "activations": {stack: bytes}}} for a model-parallel split."""
    load = defaultdict(lambda: {"params": 0, "grads": 0, "optimizer": 0, "activations": {}})
    trainable = defaultdict(list)
    for weight in weights:
        device = device_of(weight.name, device_map)
        load[device]["params"] += weight.bytes
        if weight.trainable:
            load[device]["grads"] += weight.bytes
            trainable[device].append((weight.name, weight.numel, weight.bytes // weight.numel))
    embeddings = embedding_weight_names(model)
    for device, tensors in trainable.items():
        load[device]["optimizer"] = optimizer_bytes(tensors, training_args.optim, embeddings)
    for stack, mode in zip(stacks, modes, strict=False):
        for device, layers in layers_per_device(model, stack, device_map).items():
            load[device]["activations"][stack.name] = stack_bytes(
                stack, mode, model_args, training_args, "cuda", layers
            )
    output_name = next(name for name, module in model.named_modules() if module is model.get_output_embeddings())
    load[module_device(model, output_name, device_map)]["activations"]["outside"] = outside_bytes(
        config, stacks, modes, loss_seq, model_args, training_args, "cuda"
    )
    return dict(load)


def device_total(entry: dict) -> int:
    return entry["params"] + entry["grads"] + entry["optimizer"] + sum(entry["activations"].values())


def busiest_gpu(load: dict):
    gpus = [device for device in load if isinstance(device, int)]
    if not gpus:
        raise RecipeError("the model-parallel split places nothing on a GPU.")
    return max(gpus, key=lambda device: device_total(load[device]))


# --- The estimate ---------------------------------------------------------------------------------------------


@functools.cache
def process_baseline_bytes() -> int:
    """This process's resident memory once it holds the libraries a training run loads (measured
    once: later estimates in the same process must not count what earlier ones allocated)."""
    import importlib

    for library in ("transformers.trainer", "peft", "bitsandbytes", "deepspeed", "datasets"):
        try:
            importlib.import_module(library)
        except ImportError:
            pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def trainer_hidden_size(config) -> int:
    """The hidden size the HF Trainer fills DeepSpeed's "auto" bucket sizes from (trainer_config_finalize)."""
    for candidate in (config, getattr(config, "text_config", None)):
        if hasattr(candidate, "hidden_size"):
            return candidate.hidden_size
        if hasattr(candidate, "hidden_sizes"):
            return max(candidate.hidden_sizes)
    return config.get_text_config().hidden_size


def flat_optimizer_bytes(numel: int, optim: str) -> int:
    """Optimizer state over DeepSpeed's flat fp32 partition (one tensor: no per-tensor exceptions)."""
    if optim in STATELESS_OPTIMIZERS:
        return 0
    if optim in EIGHT_BIT_OPTIMIZERS:
        return 2 * numel + 2 * 4 * math.ceil(numel / 256)
    return 8 * numel  # exp_avg and exp_avg_sq in fp32


def deepspeed_bytes(
    strategy: Strategy, model, weights: list[Weight], num_gpus: int, training_args, device: str
) -> tuple[float, float, float, float]:
    """(params, grads, optimizer, host) per GPU under DeepSpeed ZeRO (strategy resolved: no "auto" left).

    With bf16/fp16 on, DeepSpeed casts every (not quantized) parameter to that dtype. Stage >= 1 keeps fp32
    master weights and the moments of this GPU's 1/N of the trainable parameters and, at the step, their fp32
    gradients; stage 1 keeps the full low-precision gradients, stage 2 and 3 only their 1/N, plus the reduce
    buckets (two with overlap_comm; fp32 for stage 1). Stage 3 also divides the parameters, except those
    under stage3_param_persistence_threshold, and gathers one module's parameters plus the prefetch bucket.
    Offloaded optimizer: master weights, moments and fp32 gradients live on the host (with gradient
    accumulation also a gradient buffer in the training dtype); offloaded parameters: their partitions too."""
    low = 2 if strategy.precision in ("bf16", "fp16") else 4
    n, stage = max(num_gpus, 1), strategy.zero_stage
    trainable = sum(w.numel for w in weights if w.trainable)

    def held(w: Weight) -> int:
        return w.bytes if w.bytes < w.numel else w.numel * low  # 4-bit weights stay as they are

    params_all = sum(held(w) for w in weights)
    master = 4 * trainable if (stage >= 1 or low == 2) else 0
    states = master + flat_optimizer_bytes(trainable, training_args.optim)
    buckets = (
        (2 if strategy.overlap_comm else 1) * strategy.reduce_bucket_size * (4 if stage == 1 else low)
        if stage >= 1
        else 0
    )
    host = 0
    params = params_all
    if stage == 3:
        persistent = sum(held(w) for w in weights if w.numel < strategy.persistence_threshold)
        largest = max(sum(p.numel() for p in module.parameters(recurse=False)) for module in model.modules())
        gathered = (largest + strategy.prefetch_bucket_size) * low
        if strategy.offload_param and device != "cpu":
            params, host = persistent + gathered, params_all - persistent
        else:
            params = persistent + (params_all - persistent) / n + gathered
    full_grads = trainable * low if stage <= 1 else trainable * low / n
    if strategy.offload_optimizer:
        host_grads = (4 + (low if training_args.gradient_accumulation_steps > 1 else 0)) * trainable
        if device == "cpu":  # one process holds both sides
            return params + host, host_grads, states, 0
        return params, (full_grads if stage == 1 else 0) + buckets, 0, host + states + host_grads
    if stage == 0:
        return params, full_grads + (4 * trainable if low == 2 else 0), states, host
    return params, full_grads + 4 * trainable / n + buckets, states / n, host


def fsdp_bytes(
    strategy: Strategy, model, params: int, grads: int, optimizer: int, num_gpus: int, model_args, device: str
) -> tuple[float, float, float, float]:
    """(params, grads, optimizer, host) per GPU under FSDP: FULL_SHARD divides all three by the GPU count and
    gathers the largest wrapped unit (current + prefetched); SHARD_GRAD_OP keeps the parameters whole after
    forward (only grads and optimizer state divided); HYBRID_* shard within a machine; CPU offload keeps the
    shards, their gradients and the optimizer on the host, only the gathered units on the GPU."""
    n = max(num_gpus // strategy.machines if strategy.sharding.startswith("HYBRID") else num_gpus, 1)
    largest_layer = max(
        (sum(p.numel() for p in m.parameters()) for m in model.modules() if type(m).__name__ in _wrap_classes(model)),
        default=0,
    )
    gathered = 2 * largest_layer * DTYPE_BYTES[model_args.dtype]  # current + prefetched unit
    if strategy.fsdp_offload and device != "cpu":
        return gathered, 0, 0, params + grads + optimizer
    if strategy.sharding in ("SHARD_GRAD_OP", "HYBRID_SHARD_ZERO2"):
        return params, grads / n, optimizer / n, 0
    return params / n + gathered, grads / n, optimizer / n, 0


def estimate(
    script_args,
    training_args,
    model_args,
    caption_tokens: int,
    prompt_tokens: int | None = None,
    gpu_memory_gb: float = 80.0,
    num_gpus: int | None = None,
    strategy: str | None = None,
    device: str = "cuda",
) -> Estimate:
    config = load_config(model_args.model_name_or_path)
    model = meta_model(config)
    plan = training_plan(model, script_args, model_args)
    weights = weight_tensors(model, model_args, plan)
    chosen, num_gpus, strategy_detail = strategy_and_gpus(script_args, training_args, strategy, num_gpus)
    strategy = chosen.name
    if prompt_tokens is None:
        prompt_tokens = prompt_token_count(plan.family, script_args)
    stacks, loss_seq = layer_stacks(
        config, caption_tokens, prompt_tokens, image_processor_settings(model_args.model_name_or_path)
    )
    modes = stack_modes(stacks, plan)
    describe_model_facts(model, stacks, plan, model_args, modes)
    num_params = sum(w.numel for w in weights if w.kind == "base")
    num_trainable = sum(w.numel for w in weights if w.trainable)
    trainable = trainable_tensors(weights)
    params = sum(w.bytes for w in weights)
    grads = sum(numel * size for _, numel, size in trainable)
    optimizer = optimizer_bytes(trainable, training_args.optim, embedding_weight_names(model))
    activations = activation_bytes(config, stacks, modes, loss_seq, model_args, training_args, device)
    host = 0
    per_gpu = {}
    if chosen.kind == "ddp":
        grads *= 2  # gradient buckets hold a second copy for the all-reduce
    elif chosen.kind == "fsdp":
        params, grads, optimizer, host = fsdp_bytes(
            chosen, model, params, grads, optimizer, num_gpus, model_args, device
        )
    elif chosen.kind == "deepspeed":
        resolved = chosen.resolved(
            trainer_hidden_size(config),
            training_args.bf16 or training_args.bf16_full_eval,
            training_args.fp16 or training_args.fp16_full_eval,
        )
        params, grads, optimizer, host = deepspeed_bytes(resolved, model, weights, num_gpus, training_args, device)
    elif strategy == "model_parallel":
        split = planned_device_map(
            model, getattr(script_args, "device_map", None), num_gpus, gpu_memory_gb, model_args.dtype
        )
        load = per_device_load(model, config, weights, stacks, modes, loss_seq, split, model_args, training_args)
        busiest = load[busiest_gpu(load)]
        params, grads, optimizer = busiest["params"], busiest["grads"], busiest["optimizer"]
        activations = busiest["activations"]
        host = sum(entry["params"] for device, entry in load.items() if not isinstance(device, int))
        per_gpu = {str(device): device_total(entry) / GB for device, entry in load.items()}
    counted = params + grads + optimizer + sum(activations.values())
    other = 0.10 * counted
    if device == "cpu":
        other += process_baseline_bytes()
    total = counted + other
    capacity = gpu_memory_gb * GB
    fits = total + (CUDA_CONTEXT_GB * GB if device == "cuda" else 0) <= capacity
    return Estimate(
        model=model_args.model_name_or_path,
        strategy=strategy,
        num_gpus=num_gpus,
        num_params=num_params,
        trainable_params=num_trainable,
        params_gb=params / GB,
        grads_gb=grads / GB,
        optimizer_gb=optimizer / GB,
        activations_gb=sum(activations.values()) / GB,
        other_gb=other / GB,
        total_gb=total / GB,
        host_gb=host / GB,
        gpu_memory_gb=gpu_memory_gb,
        fits=fits,
        device=device,
        parts=_breakdown(weights, activations, plan, stacks, modes, per_gpu),
        strategy_detail=strategy_detail,
    )


def strategy_and_gpus(
    script_args, training_args, strategy: str | None, num_gpus: int | None
) -> tuple[Strategy, int, str]:
    """The strategy (recipes/alt_text_recipes/strategies.py: --strategy, else --deepspeed, else --fsdp, else the
    accelerate config's, else model_parallel with --device_map, else single), its GPU count (given, else the accelerate
    config's, else for model parallel the map's or those visible, else 1) and a line saying what was assumed."""
    chosen = requested_strategy(script_args, training_args, strategy)
    gpus = num_gpus
    if chosen.kind == "model_parallel":
        gpus = gpus or device_map_gpus(getattr(script_args, "device_map", None))
    gpus = gpus or chosen.processes or 1
    detail = f"{chosen.description()} ({'' if chosen.source.startswith('default') else 'from '}{chosen.source})"
    if num_gpus is None and chosen.processes is None and chosen.kind in ("ddp", "fsdp", "deepspeed"):
        detail += f"; {gpus} GPU assumed (pass --num_gpus N)"
    return chosen, gpus, detail


def _breakdown(
    weights: list[Weight],
    activations: dict[str, int],
    plan: TrainingPlan,
    stacks: list[Stack],
    modes: list[str],
    per_gpu: dict[str, float],
) -> dict:
    params: dict[str, int] = {}
    for weight in weights:
        params[weight.part] = params.get(weight.part, 0) + weight.bytes
    breakdown = {
        "params_by_part_gb": {part: size / GB for part, size in params.items()},
        "activations_by_part_gb": {name: size / GB for name, size in activations.items()},
        "trained_in_full": list(plan.full_parts),
        "stack_modes": {stack.name: mode for stack, mode in zip(stacks, modes, strict=False)},
    }
    if per_gpu:
        breakdown["per_device_gb_before_other"] = per_gpu
    return breakdown


def _wrap_classes(model) -> set[str]:
    """The units FSDP gathers one at a time: the family's wrap classes (as accelerate_configs/ lists them)."""
    return set(family_of(model).fsdp_wrap)
