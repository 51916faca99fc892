"""Load BLIP-2 models and processors, add LoRA adapters, reload what the recipes saved."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForImageTextToText, AutoProcessor, PreTrainedModel
from accelerate import PartialState
from trl import ModelConfig, get_peft_config, get_quantization_config

from .errors import RecipeError
from .parallel import describe_device_map
from .paths import resolve_local

# LoRA targets per language-model family: the attention query and value projections.
DEFAULT_LORA_TARGETS = {"opt": ["q_proj", "v_proj"], "t5": ["q", "v"]}


def torch_dtype(name: str | None) -> torch.dtype | str:
    if name in (None, "auto"):
        return "auto"
    return getattr(torch, name)


def unreachable(name_or_path: str, error: OSError) -> RecipeError:
    """A model that cannot be loaded: say which, and how to point at a local copy."""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return RecipeError(
        f"cannot load '{name_or_path}': it is not a folder here ({Path.cwd()} or the repository) and could not be "
        f"loaded from the Hub ({first_line}). Offline, download it first on a connected machine "
        f"(`hf download {name_or_path} --local-dir models/<name>`) and pass that folder, e.g. "
        f"--model_name_or_path models/<name>."
    )


def load_processor(name_or_path: str, trust_remote_code: bool = False):
    try:
        return AutoProcessor.from_pretrained(resolve_local(name_or_path), trust_remote_code=trust_remote_code)
    except OSError as error:
        raise unreachable(name_or_path, error) from None


def quantized_device_map() -> dict[str, int | str]:
    """A quantized model is placed whole on this process's device (no later `.to()` is allowed)."""
    return {"": PartialState().local_process_index if torch.cuda.is_available() else "cpu"}


def load_model(model_args: ModelConfig, device_map: str | dict | None = None,
               trust_remote_code: bool = False) -> PreTrainedModel:
    """Load the model in `model_args.dtype`, quantized when `load_in_4bit` / `load_in_8bit` ask for it,
    split over this machine's GPUs when `device_map` asks for model parallelism."""
    quantization_config = get_quantization_config(model_args)
    if device_map is None and quantization_config is not None:
        device_map = quantized_device_map()
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            resolve_local(model_args.model_name_or_path),
            revision=model_args.model_revision,
            dtype=torch_dtype(model_args.dtype),
            attn_implementation=model_args.attn_implementation,
            quantization_config=quantization_config,
            device_map=device_map,
            use_safetensors=True,  # never unpickle weights
            trust_remote_code=trust_remote_code,  # off unless asked for
        )
    except OSError as error:
        raise unreachable(model_args.model_name_or_path, error) from None
    if isinstance(getattr(model, "hf_device_map", None), dict) and len(set(model.hf_device_map.values())) > 1:
        print(describe_device_map(model.hf_device_map), flush=True)
    return model


def is_encoder_decoder(model: PreTrainedModel) -> bool:
    return bool(model.config.get_text_config().is_encoder_decoder)


def default_lora_targets(model: PreTrainedModel) -> list[str]:
    family = model.config.get_text_config().model_type
    if family not in DEFAULT_LORA_TARGETS:
        raise RecipeError(
            f"no default LoRA targets for language model '{family}'; pass --lora_target_modules "
            f"(known defaults: {DEFAULT_LORA_TARGETS})."
        )
    return DEFAULT_LORA_TARGETS[family]


def _linear_module_names(model: torch.nn.Module) -> list[str]:
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)})


def check_lora_targets(model: PreTrainedModel, targets: list[str] | str) -> None:
    """Fail before training when a target matches no module: peft would otherwise raise deep inside."""
    names = [name for name, _ in model.named_modules()]
    if isinstance(targets, str) and targets.lower() == "all-linear":
        return  # peft's own choice: every linear layer but the output layer
    if isinstance(targets, str):
        matched = any(re.fullmatch(targets, name) for name in names)
    else:
        matched = any(name.rsplit(".", 1)[-1] in targets for name in names)
    if not matched:
        raise RecipeError(
            f"LoRA target modules {targets!r} match no module of {type(model).__name__} "
            f"(language model '{model.config.get_text_config().model_type}'). "
            f"Its linear layers are named: {', '.join(_linear_module_names(model))}."
        )


def add_lora(model: PreTrainedModel, model_args: ModelConfig, gradient_checkpointing: bool) -> PeftModel:
    """Wrap the model with LoRA adapters on the language model's attention (or the targets asked for)."""
    targets = model_args.lora_target_modules or default_lora_targets(model)
    check_lora_targets(model, targets)
    peft_config: LoraConfig = get_peft_config(model_args)
    peft_config.target_modules = set(targets) if isinstance(targets, list) else targets
    # BLIP-2 takes pixel_values and builds its own language-model inputs, so the generic PeftModel
    # wrapper is the right one, not the CAUSAL_LM / SEQ_2_SEQ_LM ones that rewrite the text inputs.
    peft_config.task_type = None
    if getattr(model, "is_quantized", False):
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    return get_peft_model(model, peft_config)


def load_trained(folder: str | Path, dtype: str = "float32", base_model: str | None = None,
                 ) -> tuple[PreTrainedModel, object]:
    """Reload a recipe's output folder (full model or LoRA adapter) with its processor, in eval mode.

    An adapter is put on the base model named in its `adapter_config.json`, or on `base_model` when the
    base lives elsewhere on this machine. The base is loaded unquantized, also for QLoRA adapters.
    """
    folder = Path(resolve_local(str(folder)))
    name = str(folder)
    try:
        processor = AutoProcessor.from_pretrained(folder)
        adapter_config = folder / "adapter_config.json"
        if adapter_config.exists():
            name = base_model or json.loads(adapter_config.read_text())["base_model_name_or_path"]
            base = AutoModelForImageTextToText.from_pretrained(resolve_local(name), dtype=torch_dtype(dtype),
                                                               use_safetensors=True)
            model = PeftModel.from_pretrained(base, folder)
        else:
            model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch_dtype(dtype), use_safetensors=True)
    except OSError as error:  # a missing folder or file, or a Hub id that cannot be reached offline
        raise unreachable(name, error) from None
    return model.eval(), processor


def inference_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
