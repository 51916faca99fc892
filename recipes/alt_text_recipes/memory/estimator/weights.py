"""Bytes of every tensor the run holds (weights, LoRA matrices, trainable copies), their gradients and the
optimizer's state."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from alt_text_recipes.memory.estimator.plan import TrainingPlan

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 4, None: 4}
EIGHT_BIT_OPTIMIZERS = {"adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit", "adam8bit"}
STATELESS_OPTIMIZERS = {"sgd"}
CUDA_CONTEXT_GB = 0.5  # what the CUDA context and kernels take outside the allocator's count


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


def is_quantized_linear(name: str, module: torch.nn.Module, keep_in_fp32: list[str], output_layer) -> bool:
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
            and is_quantized_linear(module_name, module, keep_in_fp32, output_layer)
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


def flat_optimizer_bytes(numel: int, optim: str) -> int:
    """Optimizer state over DeepSpeed's flat fp32 partition (one tensor: no per-tensor exceptions)."""
    if optim in STATELESS_OPTIMIZERS:
        return 0
    if optim in EIGHT_BIT_OPTIMIZERS:
        return 2 * numel + 2 * 4 * math.ceil(numel / 256)
    return 8 * numel  # exp_avg and exp_avg_sq in fp32
