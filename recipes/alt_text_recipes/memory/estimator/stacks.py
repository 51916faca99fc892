"""What the layer stacks save for backward: how each stack takes part (trained, adapted, passed through,
frozen), the precision it runs in, and what is saved outside the stacks. The per-layer arithmetic lives in
recipes/alt_text_recipes/memory/activations.py, each family's stacks in families/."""

from __future__ import annotations

import torch

from alt_text_recipes.data.errors import RecipeError
from alt_text_recipes.memory.activations import Precision, precision, rms_norm_bytes, stack_saved_bytes
from alt_text_recipes.memory.estimator.plan import TrainingPlan
from alt_text_recipes.memory.estimator.weights import DTYPE_BYTES, is_quantized_linear
from alt_text_recipes.train.families import FAMILIES, within
from alt_text_recipes.train.stack_shapes import Stack

# Each family's layer arithmetic lives in its module (recipes/alt_text_recipes/train/families/<family>.py).
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
    return stack_saved_bytes(
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
    mode = dict(zip([stack.name for stack in stacks], modes, strict=True))
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
        for index, (stack, mode) in enumerate(zip(stacks, modes, strict=True))
    }
    result["outside"] = outside_bytes(config, stacks, modes, loss_seq, model_args, training_args, device)
    return result


def fp32_weight(name: str, module: torch.nn.Module, model, model_args) -> bool:
    """Whether a linear layer's weight is held in fp32: with fp32 weights, all; under 4/8-bit, those left
    unquantized (prepare_model_for_kbit_training puts them in fp32); with bf16 weights, none."""
    if model_args.load_in_4bit or model_args.load_in_8bit:
        return not is_quantized_linear(
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
