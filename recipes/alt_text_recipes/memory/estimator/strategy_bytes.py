"""How a distributed strategy divides params, grads and optimizer state over the GPUs (DDP, FSDP, DeepSpeed
ZeRO), and which strategy and GPU count an estimate assumes (recipes/alt_text_recipes/train/strategies.py parses
the strategy)."""

from __future__ import annotations

from alt_text_recipes.data.errors import RecipeError
from alt_text_recipes.memory.estimator.placement import device_map_gpus
from alt_text_recipes.memory.estimator.weights import DTYPE_BYTES, Weight, flat_optimizer_bytes
from alt_text_recipes.train.families import family_of
from alt_text_recipes.train.strategies import STRATEGY_NAMES, Strategy, requested_strategy


def trainer_hidden_size(config) -> int:
    """The hidden size the HF Trainer fills DeepSpeed's "auto" bucket sizes from (trainer_config_finalize)."""
    for candidate in (config, getattr(config, "text_config", None)):
        if hasattr(candidate, "hidden_size"):
            return candidate.hidden_size
        if hasattr(candidate, "hidden_sizes"):
            return max(candidate.hidden_sizes)
    return config.get_text_config().hidden_size


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


def strategy_and_gpus(
    script_args, training_args, strategy: str | None, num_gpus: int | None
) -> tuple[Strategy, int, str]:
    """The strategy (recipes/alt_text_recipes/train/strategies.py: --strategy, else --deepspeed, else --fsdp, else the
    accelerate config's, else model_parallel with --device_map, else single), its GPU count (given, else the accelerate
    config's, else for model parallel the map's or those visible, else 1) and a line saying what was assumed. More
    than one GPU with one process (no strategy named) is refused: its figures would be one GPU's."""
    chosen = requested_strategy(script_args, training_args, strategy)
    gpus = num_gpus
    if chosen.kind == "model_parallel":
        gpus = gpus or device_map_gpus(getattr(script_args, "device_map", None))
    gpus = gpus or chosen.processes or 1
    if chosen.kind == "single" and gpus > 1:
        raise RecipeError(
            f"{gpus} GPUs ({'--num_gpus' if num_gpus else chosen.source}) but no strategy to spread the run over "
            "them: one process trains on one GPU. Pick one with --strategy "
            f"{', '.join(name for name in STRATEGY_NAMES if name != 'single')} (or --deepspeed, --fsdp, "
            "--accelerate_config, --device_map), or leave out --num_gpus for one GPU."
        )
    detail = f"{chosen.description()} ({'' if chosen.source.startswith('default') else 'from '}{chosen.source})"
    if num_gpus is None and chosen.processes is None and chosen.kind in ("ddp", "fsdp", "deepspeed"):
        detail += f"; {gpus} GPU assumed (pass --num_gpus N)"
    return chosen, gpus, detail


def _wrap_classes(model) -> set[str]:
    """The units FSDP gathers one at a time: the family's wrap classes (as accelerate_configs/ lists them)."""
    return set(family_of(model).fsdp_wrap)
