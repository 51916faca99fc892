"""The estimate: a recipe's training memory per GPU, part by part, from the concern modules beside it."""

from __future__ import annotations

import functools
import json
import resource
from dataclasses import asdict, dataclass, field

from alt_text_recipes.memory.estimator.model_files import image_processor_settings
from alt_text_recipes.memory.estimator.placement import (
    busiest_gpu,
    device_total,
    per_device_load,
    planned_device_map,
)
from alt_text_recipes.memory.estimator.plan import TrainingPlan, training_plan
from alt_text_recipes.memory.estimator.stacks import (
    activation_bytes,
    describe_model_facts,
    layer_stacks,
    stack_modes,
)
from alt_text_recipes.memory.estimator.strategy_bytes import (
    deepspeed_bytes,
    fsdp_bytes,
    strategy_and_gpus,
    trainer_hidden_size,
)
from alt_text_recipes.memory.estimator.tokens import caption_token_count, prompt_token_count
from alt_text_recipes.memory.estimator.weights import (
    Weight,
    embedding_weight_names,
    optimizer_bytes,
    trainable_tensors,
    weight_tensors,
)
from alt_text_recipes.memory.parts import GB, MemoryParts
from alt_text_recipes.train.modeling import load_config, meta_model
from alt_text_recipes.train.stack_shapes import Stack

CUDA_CONTEXT_GB = 0.5  # what the CUDA context and kernels take outside the allocator's count


@dataclass
class Estimate:
    model: str
    strategy: str
    num_gpus: int
    num_params: int
    trainable_params: int
    memory: MemoryParts  # bytes per GPU; read in GB as params_gb ... total_gb
    host_gb: float
    gpu_memory_gb: float
    fits: bool
    device: str
    parts: dict = field(default_factory=dict)
    strategy_detail: str = (
        ""  # what the strategy keeps where, where it was read from, and whether the GPU count is assumed
    )

    def __getattr__(self, name: str) -> float:
        # params_gb, grads_gb, ..., total_gb: the names the JSON, the tests and the reports have always read
        if name.endswith("_gb") and "memory" in self.__dict__:
            figures = self.memory.gb()
            if name in figures:
                return figures[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def as_dict(self) -> dict:
        """Every field, the memory parts flat in GB (params_gb ... total_gb) where `memory` stands."""
        flat = {}
        for name, value in asdict(self).items():
            flat.update(self.memory.gb() if name == "memory" else {name: value})
        return flat

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

    def table(self) -> str:
        labels = {"optimizer": "optimizer state", "total": "total per GPU"}
        rows = [(labels.get(name, name), getattr(self, f"{name}_gb")) for name in (*MemoryParts.names(), "total")]
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


def estimate_run(script_args, training_args, model_args, **options) -> Estimate:
    """`estimate` for a run as its arguments describe it: the caption length counted from its training data."""
    caption_tokens = caption_token_count(script_args, model_args, training_args.seed)
    return estimate(script_args, training_args, model_args, caption_tokens, **options)


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
    config = load_config(model_args.model_name_or_path, shipped_first=True)
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
    memory = MemoryParts(params, grads, optimizer, sum(activations.values()), other)
    fits = memory.total + (CUDA_CONTEXT_GB * GB if device == "cuda" else 0) <= gpu_memory_gb * GB
    return Estimate(
        model=model_args.model_name_or_path,
        strategy=strategy,
        num_gpus=num_gpus,
        num_params=num_params,
        trainable_params=num_trainable,
        memory=memory,
        host_gb=host / GB,
        gpu_memory_gb=gpu_memory_gb,
        fits=fits,
        device=device,
        parts=_breakdown(weights, activations, plan, stacks, modes, per_gpu),
        strategy_detail=strategy_detail,
    )


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
        "stack_modes": {stack.name: mode for stack, mode in zip(stacks, modes, strict=True)},
    }
    if per_gpu:
        breakdown["per_device_gb_before_other"] = per_gpu
    return breakdown
