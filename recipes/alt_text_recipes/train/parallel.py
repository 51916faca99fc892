"""Spreading one run over several processes or GPUs: learning-rate scaling and model-parallel splits."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import torch
from accelerate import infer_auto_device_map
from accelerate.utils import get_balanced_memory

from alt_text_recipes.data.errors import RecipeError

DEVICE_MAP_KEYWORDS = ("auto", "balanced", "balanced_low_0", "sequential")
# How a launcher that started several processes tells each how many there are (torchrun, DeepSpeed, MPI).
WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def lone_launch_warning(environ: Mapping[str, str] = os.environ) -> str | None:
    """What to say when `accelerate launch` was asked for several processes and started this one alone.

    Without --multi_gpu (or a config whose distributed_type spreads the run) accelerate launch runs its
    simple launcher (accelerate/utils/launch.py, `prepare_simple_launcher_cmd_env`): one process, given
    MASTER_ADDR/MASTER_PORT when more than one process or machine was asked for, but no world size."""
    launched_by_accelerate = "ACCELERATE_MIXED_PRECISION" in environ  # every accelerate launcher sets it
    if not launched_by_accelerate or "MASTER_ADDR" not in environ:
        return None
    if any(variable in environ for variable in WORLD_SIZE_VARIABLES):
        return None
    return (
        "accelerate launch was asked for more than one process (--num_processes or --num_machines) but started "
        "only this one: without --multi_gpu, or an accelerate config whose distributed_type is MULTI_GPU, "
        "DEEPSPEED or FSDP, it runs a single process. Add --multi_gpu (on CPUs too, with --use_cpu true) or "
        "launch with --config_file accelerate_configs/<config>.yaml."
    )


def scaled_learning_rate(learning_rate: float, num_processes: int, rule: str) -> float:
    """The rate for `num_processes` data-parallel processes, given the one tuned for one process:
    the global batch grows N-fold, so linear scaling multiplies by N and square-root scaling by sqrt(N)."""
    factor = {"linear": num_processes, "sqrt": math.sqrt(num_processes), "none": 1}[rule]
    return learning_rate * factor


def parse_device_map(value: str | None) -> str | dict | None:
    """`--device_map`: a keyword, a JSON object, or a JSON file."""
    if value is None or value in DEVICE_MAP_KEYWORDS:
        return value
    text = Path(value).read_text() if value.endswith(".json") and Path(value).exists() else value
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as error:
        raise RecipeError(
            f"--device_map must be one of {DEVICE_MAP_KEYWORDS}, a JSON object or a .json file; "
            f"got {value!r} ({error.msg})."
        ) from None
    if not isinstance(mapping, dict):
        raise RecipeError("--device_map JSON must map module names to devices.")
    return mapping


def describe_device_map(device_map: dict) -> str:
    """One line per device: how many top-level blocks and which layers land there."""
    per_device: dict = {}
    for module, device in device_map.items():
        per_device.setdefault(str(device), []).append(module)
    lines = []
    for device, modules in per_device.items():
        parts = Counter(module.split(".")[0] for module in modules)
        lines.append(f"  {device}: {len(modules)} blocks ({', '.join(f'{p} x{n}' for p, n in parts.items())})")
    return "model split over devices:\n" + "\n".join(lines)


def plan_device_map(
    model: torch.nn.Module, num_gpus: int, gpu_memory_gb: float, dtype: str = "bfloat16", balanced: bool = True
) -> dict:
    """The layer split for `num_gpus` GPUs of `gpu_memory_gb` each, computed on a meta-device model:
    transformer layers (the model's no-split classes) are never cut in two."""
    max_memory = {index: int(gpu_memory_gb * 1024**3) for index in range(num_gpus)}
    no_split = list(getattr(model, "_no_split_modules", None) or [])
    if balanced:
        max_memory = get_balanced_memory(model, max_memory=max_memory, no_split_module_classes=no_split, dtype=dtype)
    return infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split, dtype=dtype)


def align_query_tokens_for_fsdp(model: torch.nn.Module) -> None:
    """FSDP2 requires one dtype per unit. BLIP-2's query tokens sit in the root unit beside the embeddings;
    when they are kept in fp32 (fp16 loads) put them in the embeddings' dtype: the Q-Former casts its
    input back to its own dtype, so only the 32 x 768 table is rounded."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    tokens = getattr(base, "query_tokens", None)
    target = base.get_input_embeddings().weight.dtype
    if tokens is not None and tokens.dtype != target:
        tokens.data = tokens.data.to(target)
