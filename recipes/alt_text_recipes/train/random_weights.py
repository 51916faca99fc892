"""Real models with random weights: the shipped configs' shapes, the tiny twins' tokenizers.

Weights cannot be downloaded here (nor on the lent GPU machine), yet memory and speed depend only on the
shapes. `build_random_model` writes a model folder that every recipe, the estimator and the benchmarks
load like any other: the real config (optionally with fewer layers per stack, the widths untouched), random
weights, and the processor of the family's tiny twin adapted to the real model (its image size, its number
of image tokens, the twin's special-token ids written into the config). The vocabulary stays the real one,
so the embeddings and the logits are full size; the twin's tokenizer only ever produces low ids.

With `weights=False` the folder is a *skeleton*: the config and processor alone (kilobytes, not the tens of
GB of a real model). The recipes (`modeling.load_model`), the estimator and the benchmarks take it like any
model folder; the weights are drawn at load time directly on the device, in the dtype asked for
(`instantiate`), so a 12B model costs seconds on a GPU instead of writing and reading 24 GB. A skeleton cannot
be loaded quantized (QLoRA quantizes weights as it reads them): build that one with weights.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, PretrainedConfig

from alt_text_recipes.data.errors import RecipeError
from alt_text_recipes.data.paths import SHIPPED_CONFIGS, resolve_local, shipped_config
from alt_text_recipes.train.families import family_of

MARKER = "random_weights.json"


def real_config(name: str) -> PretrainedConfig:
    """A shipped real config by model id (`Salesforce/blip2-opt-2.7b`), folder name or path."""
    folder = Path(name) if (Path(name) / "config.json").is_file() else shipped_config(name)
    if folder is None:
        known = ", ".join(sorted(p.name for p in SHIPPED_CONFIGS.iterdir()))
        raise RecipeError(f"no shipped config for '{name}' (data/model_configs has {known}).")
    return AutoConfig.from_pretrained(folder)


def twin_of(config: PretrainedConfig) -> str:
    """The tiny twin (its folder) whose tokenizer and processor stand in for the real model's: one its family
    declares for this model type and kind of language model."""
    for twin in family_of(config).twins:
        if twin.stands_in_for(config):
            return twin.folder
    raise RecipeError(f"no tiny twin stands in for '{config.model_type}' models.")


def with_layers(config: PretrainedConfig, layers: int | None) -> PretrainedConfig:
    """The config with at most `layers` layers in each stack (None: as shipped); widths untouched."""
    config = copy.deepcopy(config)
    if layers is None:
        return config
    depth_fields = ("num_hidden_layers", "num_layers", "num_decoder_layers", "resampler_depth")
    for sub in ("vision_config", "qformer_config", "text_config", "perceiver_config"):
        part = getattr(config, sub, None)
        for name in depth_fields:
            if part is not None and isinstance(getattr(part, name, None), int):
                setattr(part, name, min(getattr(part, name), layers))
    return config


def adapt_processor(processor, config: PretrainedConfig, image_splitting: bool = False):
    """The twin's processor, made to feed the real model: its image size and image-token count."""
    image_processor = processor.image_processor
    vision = config.vision_config
    if config.model_type == "blip-2":
        processor.num_query_tokens = config.num_query_tokens
        image_processor.size = {"height": vision.image_size, "width": vision.image_size}
    elif config.model_type == "idefics2":
        processor.image_seq_len = config.perceiver_config.resampler_n_latents
        image_processor.size = {"shortest_edge": 378, "longest_edge": 980}  # the shipped processor's
        image_processor.do_image_splitting = image_splitting
    elif config.model_type == "llava":
        processor.patch_size = vision.patch_size
        image_processor.size = {"shortest_edge": vision.image_size}
        image_processor.crop_size = {"height": vision.image_size, "width": vision.image_size}
    return processor


def _use_twin_token_ids(config: PretrainedConfig, tokenizer) -> None:
    """Special tokens as the twin's tokenizer numbers them (all below the real vocabulary size)."""
    image_token = getattr(tokenizer, "image_token", None) or "<image>"
    image_id = tokenizer.convert_tokens_to_ids(image_token)
    for name in ("image_token_index", "image_token_id"):
        if hasattr(config, name):
            setattr(config, name, image_id)
    text = config.get_text_config()
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, name)
        if value is not None:
            setattr(text, name, value)
    if getattr(config, "pad_token_id", None) is not None and tokenizer.pad_token_id is not None:
        config.pad_token_id = tokenizer.pad_token_id


def build_random_model(
    name: str,
    out_folder: str | Path,
    layers: int | None = None,
    dtype: str = "bfloat16",
    device: str | None = None,
    image_splitting: bool = False,
    weights: bool = True,
) -> Path:
    """Write a loadable model folder: the shipped config of `name` (at most `layers` layers per stack),
    random weights in `dtype` (initialised on `device`: a GPU makes billions of them in seconds), and the
    twin's processor adapted to it. `weights=False`: a skeleton (config and processor; the weights are drawn
    when a recipe loads it). Reused when the folder already holds the same model."""
    out_folder = Path(out_folder)
    config = with_layers(real_config(name), layers)
    # The twin is a folder of this repository: read as any local processor (modeling.py loads models through
    # this module's skeletons, so it is not imported here).
    processor = adapt_processor(AutoProcessor.from_pretrained(resolve_local(twin_of(config))), config, image_splitting)
    _use_twin_token_ids(config, processor.tokenizer)
    marker = out_folder / MARKER
    description = json.dumps({"model": str(name), "layers": layers, "dtype": dtype, "weights": weights})
    if marker.is_file() and marker.read_text() == description:
        return out_folder
    out_folder.mkdir(parents=True, exist_ok=True)
    for stale in out_folder.glob("*.safetensors*"):  # a skeleton must not pick up an earlier build's weights
        stale.unlink()
    if weights:
        model = _random_model(config, dtype, device)
        model.save_pretrained(out_folder)
        del model
    else:
        config.dtype = dtype
        config.save_pretrained(out_folder)
    processor.save_pretrained(out_folder)
    marker.write_text(description)
    return out_folder


def is_skeleton(folder: str | Path) -> bool:
    """Whether `folder` is a random-weights skeleton (config and processor, weights drawn at load)."""
    marker = Path(folder) / MARKER
    return marker.is_file() and json.loads(marker.read_text()).get("weights") is False


def instantiate(
    folder: str | Path,
    dtype: str | torch.dtype | None = None,
    attn_implementation: str | None = None,
    device: str | torch.device | None = None,
) -> torch.nn.Module:
    """The model of a skeleton folder with random weights drawn on `device` (default: the GPU when there is
    one) in `dtype` (default: the one the skeleton was built for), as `from_pretrained` would return it."""
    described = json.loads((Path(folder) / MARKER).read_text())
    if dtype in (None, "auto"):
        dtype = described["dtype"]
    config = AutoConfig.from_pretrained(folder)
    return _random_model(config, dtype, device, attn_implementation)


def _random_model(
    config: PretrainedConfig,
    dtype: str | torch.dtype,
    device: str | torch.device | None,
    attn_implementation: str | None = None,
) -> torch.nn.Module:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    _fix_initialisation(model)
    return model.eval()  # as from_pretrained returns it; the Trainer switches to train mode


@torch.no_grad()
def _fix_initialisation(model: torch.nn.Module) -> None:
    """BLIP-2 built from its config starts its query tokens at zero, which with the Q-Former's LayerNorm
    eps of 1e-12 gives gradients of ~1e11; the released model's are of order 0.02."""
    query_tokens = getattr(model, "query_tokens", None)
    if query_tokens is not None:
        query_tokens.normal_(0.0, 0.02)
