"""Load models and processors of any supported family, choose what trains (parts, LoRA adapters), reload
what the recipes saved."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch
from accelerate import PartialState
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, PretrainedConfig, PreTrainedModel
from trl import ModelConfig, get_peft_config, get_quantization_config

from alt_text_recipes.data.errors import RecipeError, first_line
from alt_text_recipes.data.library_internals import without_zero3_init
from alt_text_recipes.data.logs import get_logger
from alt_text_recipes.data.paths import portable_name, resolve_local, shipped_config
from alt_text_recipes.train.families import (
    PARTS,
    bare_parameters,
    describe_trainable,
    family_of,
    freeze_all_but,
    part_module_names,
    targets_within,
)
from alt_text_recipes.train.parallel import describe_device_map
from alt_text_recipes.train.random_weights import instantiate, is_skeleton

logger = get_logger(__name__)

# Output layers stay unquantized (what transformers skips by default when no skip list is given).
OUTPUT_LAYERS = ["lm_head"]


def torch_dtype(name: str | None) -> torch.dtype | str:
    if name in (None, "auto"):
        return "auto"
    return getattr(torch, name)


def unreachable(name_or_path: str, error: OSError) -> RecipeError:
    """A model that cannot be loaded: say which, and how to point at a local copy."""
    return RecipeError(
        f"cannot load '{name_or_path}': it is not a folder here ({Path.cwd()} or the repository) and could not be "
        f"loaded from the Hub ({first_line(error)}). Offline, download it first on a connected machine "
        f"(`hf download {name_or_path} --local-dir models/<name>`) and pass that folder, e.g. "
        f"--model_name_or_path models/<name>."
    )


def model_source(name_or_path: str) -> str:
    """`name_or_path` as `from_pretrained` should get it: a local folder (checked to hold a saved model or
    adapter, so that a wrong folder is named here rather than in a transformers traceback), or a Hub id."""
    source = resolve_local(name_or_path)
    folder = Path(source)
    if folder.is_dir() and not any((folder / name).is_file() for name in ("config.json", "adapter_config.json")):
        where = "" if str(folder.resolve()) == name_or_path else f" ({folder.resolve()})"
        raise RecipeError(
            f"'{name_or_path}' is a folder{where} that holds no saved model: no config.json (or "
            "adapter_config.json). Pass the folder a recipe saved (or save_pretrained wrote), or a Hub id."
        )
    return source


def load_processor(name_or_path: str, trust_remote_code: bool = False):
    try:
        return AutoProcessor.from_pretrained(model_source(name_or_path), trust_remote_code=trust_remote_code)
    except OSError as error:
        raise unreachable(name_or_path, error) from None


def quantized_device_map(use_cpu: bool = False) -> dict[str, int | str]:
    """A quantized model is placed whole on this process's device (no later `.to()` is allowed): its GPU,
    or the CPU when there is none or the run asks for the CPU (`--use_cpu true` on a machine with a GPU)."""
    return {"": PartialState().local_process_index if torch.cuda.is_available() and not use_cpu else "cpu"}


def load_model(
    model_args: ModelConfig,
    device_map: str | dict | None = None,
    trust_remote_code: bool = False,
    full_parts: tuple[str, ...] = (),
    use_cpu: bool = False,
) -> PreTrainedModel:
    """Load the model in `model_args.dtype`, quantized when `load_in_4bit` / `load_in_8bit` ask for it
    (except the parts in `full_parts`, which train in full), split over this machine's GPUs when
    `device_map` asks for model parallelism. `use_cpu`: a quantized model stays on the CPU."""
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None and full_parts:
        family = family_of(load_config(model_args.model_name_or_path, trust_remote_code))
        quantization_config.llm_int8_skip_modules = [
            prefix for part in full_parts for prefix in family.parts[part]
        ] + OUTPUT_LAYERS
    if device_map is None and quantization_config is not None:
        device_map = quantized_device_map(use_cpu)
    source = model_source(model_args.model_name_or_path)
    if is_skeleton(source):
        return _instantiate_skeleton(model_args, quantization_config, device_map)
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            source,
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
        logger.info(describe_device_map(model.hf_device_map))
    return model


def _instantiate_skeleton(model_args: ModelConfig, quantization_config, device_map) -> PreTrainedModel:
    """A random-weights skeleton (`random_weights.build_random_model(weights=False)`): the weights are drawn
    on this process's device, in the dtype asked for, without reading any from disk."""
    if quantization_config is not None or device_map is not None:
        raise RecipeError(
            f"{model_args.model_name_or_path} is a random-weights skeleton (no weight files): it cannot "
            "be loaded quantized or split with --device_map. Build it with its weights "
            "(recipes/alt_text_recipes/train/random_weights.build_random_model(..., weights=True))."
        )
    device = f"cuda:{PartialState().local_process_index}" if torch.cuda.is_available() else "cpu"
    return instantiate(
        resolve_local(model_args.model_name_or_path), model_args.dtype, model_args.attn_implementation, device
    )


def load_config(name_or_path: str, trust_remote_code: bool = False, shipped_first: bool = False) -> PretrainedConfig:
    """A model's configuration without its weights. `shipped_first`: a real model's config shipped in
    data/model_configs is read instead of the Hub's (the estimator and the benchmarks work offline on the real
    model names; training reads what it will load)."""
    shipped = shipped_config(name_or_path) if shipped_first else None
    try:
        source = str(shipped) if shipped is not None else model_source(name_or_path)
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as error:
        raise unreachable(name_or_path, error) from None


def meta_model(config: PretrainedConfig) -> torch.nn.Module:
    """The model of `config` on the meta device: its modules and shapes, no memory."""
    with torch.device("meta"), without_zero3_init():
        return AutoModelForImageTextToText.from_config(config)


def is_encoder_decoder(model: PreTrainedModel) -> bool:
    return bool(model.config.get_text_config().is_encoder_decoder)


def lora_targets(model: PreTrainedModel, model_args: ModelConfig) -> list[str] | str:
    """`--lora_target_modules`, else the family's defaults for this language model. Names are module names;
    one string that is not a plain name is peft's regex over the full module path (or 'all-linear')."""
    targets = model_args.lora_target_modules
    # trl's ModelConfig turns a one-name list (`--lora_target_modules q_proj`) into the string 'q_proj', which
    # peft would read as a regex for the whole dotted path, matching nothing: a plain name stays a name.
    if isinstance(targets, str) and re.fullmatch(r"\w+", targets):
        return [targets]
    return targets or family_of(model).default_lora_targets(model.config.get_text_config().model_type)


def choose_trainable_parts(model: PreTrainedModel, parts: tuple[str, ...], adapters: bool) -> None:
    """Full fine-tuning: freeze every part not in `parts`, and print what trains (LoRA: after add_lora)."""
    family = family_of(model)
    if not adapters:
        freeze_all_but(model, family, parts)
    logger.info(describe_trainable(model, family, parts, adapters))


def _linear_module_names(model: torch.nn.Module) -> list[str]:
    return sorted(
        {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    )


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


def add_lora(
    model: PreTrainedModel, model_args: ModelConfig, gradient_checkpointing: bool, full_parts: tuple[str, ...] = ()
) -> PeftModel:
    """Wrap the model with LoRA adapters on its family's default targets (or the targets asked for);
    the parts in `full_parts` train in full beside them (peft's modules_to_save, saved with the adapter)."""
    family = family_of(model)
    targets = lora_targets(model, model_args)
    check_lora_targets(model, targets)
    peft_config: LoraConfig = get_peft_config(model_args)
    if full_parts:
        targets = _targets_outside(model, targets, full_parts)
        peft_config.modules_to_save = [
            *(peft_config.modules_to_save or []),
            *part_module_names(model, family, full_parts),
        ]
        for name in bare_parameters(model, family, full_parts):
            logger.info(
                f"note: {name} is a bare parameter, which peft cannot train beside LoRA adapters; it stays frozen."
            )
    peft_config.target_modules = set(targets) if isinstance(targets, list) else targets
    # The models take pixel_values and build their own language-model inputs, so the generic PeftModel
    # wrapper is the right one, not the CAUSAL_LM / SEQ_2_SEQ_LM ones that rewrite the text inputs.
    peft_config.task_type = None
    if getattr(model, "is_quantized", False):
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    adapted = get_peft_model(model, peft_config)
    # peft records the base as it was loaded, a path relative to where training ran; adapter_config.json gets
    # one that loads from any folder (PeftModel/AutoPeftModel/pipeline read it).
    config = adapted.peft_config[adapted.active_adapter]
    if config.base_model_name_or_path:
        config.base_model_name_or_path = portable_name(config.base_model_name_or_path)
    return adapted


def _targets_outside(model: PreTrainedModel, targets: list[str] | str, full_parts: tuple[str, ...]) -> str:
    """The LoRA targets limited to the parts that do not train in full (no adapter on a trained weight)."""
    family = family_of(model)
    if isinstance(targets, str) and targets.lower() == "all-linear":
        output = model.get_output_embeddings()
        targets = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, module in model.named_modules()
                if isinstance(module, torch.nn.Linear) and module is not output
            }
        )
    adapter_parts = tuple(part for part in PARTS if part not in full_parts)
    limited = targets_within(targets, family, adapter_parts) if adapter_parts else r"(?!)"
    if not any(re.fullmatch(limited, name) for name, _ in model.named_modules()):
        raise RecipeError(
            f"every LoRA target ({targets!r}) lies in a part trained in full (--train_modules "
            f"{' '.join(full_parts)}): no adapter is left. Use recipes/full_ft.py with "
            "--train_modules, or name fewer parts."
        )
    return limited


def load_trained(
    folder: str | Path,
    dtype: str = "float32",
    base_model: str | None = None,
) -> tuple[PreTrainedModel, object]:
    """Reload a recipe's output folder (full model or LoRA adapter) with its processor, in eval mode.

    An adapter is put on the base model named in its `adapter_config.json`, or on `base_model` when the
    base lives elsewhere on this machine. The base is loaded unquantized, also for QLoRA adapters.
    """
    folder = Path(model_source(str(folder)))
    name = str(folder)
    try:
        processor = AutoProcessor.from_pretrained(folder)
        adapter_config = folder / "adapter_config.json"
        if adapter_config.exists():
            name = base_model or json.loads(adapter_config.read_text())["base_model_name_or_path"]
            base = AutoModelForImageTextToText.from_pretrained(
                resolve_local(name), dtype=torch_dtype(dtype), use_safetensors=True
            )
            model = PeftModel.from_pretrained(base, folder)
        else:
            model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch_dtype(dtype), use_safetensors=True)
    except OSError as error:  # a missing folder or file, or a Hub id that cannot be reached offline
        raise unreachable(name, error) from None
    return model.eval(), processor


def load_for_inference(
    folder: str | Path, dtype: str = "auto", quantize: str = "none", device: str | torch.device = "cpu"
) -> tuple[PreTrainedModel, object]:
    """A recipe's output folder ready to write alt text on `device`: in `dtype`, or with its linear layers
    in int8 (`quantize="int8"`, CPU only; loaded in float32 first)."""
    if quantize == "int8":
        model, processor = load_trained(folder, "float32")
        return quantize_linear_int8(model), processor
    model, processor = load_trained(folder, dtype)
    return model.to(device), processor


def inference_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def quantize_linear_int8(model: torch.nn.Module) -> torch.nn.Module:
    """PyTorch's dynamic int8 quantization of every linear layer, for inference on a CPU: weights stored in
    int8, activations quantized per batch on the fly. An adapter is merged into its base first: peft's LoRA
    layers read their weight's dtype, which a quantized layer no longer has."""
    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    with warnings.catch_warnings():
        # torch 2.13 announces that torch.ao.quantization moves to torchao; the API still works here.
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
