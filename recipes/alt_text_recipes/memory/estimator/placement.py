"""Model parallel: where `--device_map` puts each layer, and what the most loaded GPU holds."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from contextlib import contextmanager

import torch

from alt_text_recipes.data.errors import RecipeError
from alt_text_recipes.memory.estimator.stacks import outside_bytes, stack_bytes
from alt_text_recipes.memory.estimator.weights import Weight, embedding_weight_names, optimizer_bytes
from alt_text_recipes.train.parallel import parse_device_map, plan_device_map
from alt_text_recipes.train.stack_shapes import Stack


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
    for stack, mode in zip(stacks, modes, strict=True):
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
