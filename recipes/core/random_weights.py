"""Real models with random weights: the shipped configs' shapes, the tiny twins' tokenizers.

Weights cannot be downloaded here (nor on the lent GPU machine), yet memory and speed depend only on the
shapes. `build_random_model` writes a model folder that every recipe, the estimator and the benchmarks
load like any other: the real config (optionally with fewer layers per stack, the widths untouched), random
weights, and the processor of the family's tiny twin adapted to the real model (its image size, its number
of image tokens, the twin's special-token ids written into the config). The vocabulary stays the real one,
so the embeddings and the logits are full size; the twin's tokenizer only ever produces low ids.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, PretrainedConfig

from .errors import RecipeError
from .families import family_of
from .modeling import load_processor
from .paths import REPO_ROOT

SHIPPED_CONFIGS = REPO_ROOT / "data" / "model_configs"
TWINS = {"blip2-opt": "data/models/tiny-blip2-opt", "blip2-t5": "data/models/tiny-blip2-t5",
         "idefics2": "data/models/tiny-idefics2", "llava": "data/models/tiny-llava"}


def shipped_config(name: str) -> PretrainedConfig:
    """A shipped real config by model id (`Salesforce/blip2-opt-2.7b`), folder name or path."""
    for folder in (Path(name), SHIPPED_CONFIGS / name.split("/")[-1]):
        if (folder / "config.json").is_file():
            return AutoConfig.from_pretrained(folder)
    known = ", ".join(sorted(p.name for p in SHIPPED_CONFIGS.iterdir()))
    raise RecipeError(f"no shipped config for '{name}' (data/model_configs has {known}).")


def twin_of(config: PretrainedConfig) -> str:
    """The tiny twin whose tokenizer and processor stand in for the real model's."""
    if config.model_type == "blip-2":
        return TWINS["blip2-t5" if config.get_text_config().is_encoder_decoder else "blip2-opt"]
    twin = TWINS.get(family_of(config).name)
    if twin is None or config.model_type not in ("idefics2", "llava"):
        raise RecipeError(f"no tiny twin stands in for '{config.model_type}' models.")
    return twin


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


def build_random_model(name: str, out_folder: str | Path, layers: int | None = None, dtype: str = "bfloat16",
                       device: str | None = None, image_splitting: bool = False) -> Path:
    """Write a loadable model folder: the shipped config of `name` (at most `layers` layers per stack),
    random weights in `dtype` (initialised on `device`: a GPU makes billions of them in seconds), and the
    twin's processor adapted to it. Reused when the folder already holds the same model."""
    out_folder = Path(out_folder)
    config = with_layers(shipped_config(name), layers)
    processor = adapt_processor(load_processor(twin_of(config)), config, image_splitting)
    _use_twin_token_ids(config, processor.tokenizer)
    marker = out_folder / "random_weights.json"
    description = f'{{"model": "{name}", "layers": {layers or "null"}, "dtype": "{dtype}"}}'
    if marker.is_file() and marker.read_text() == description:
        return out_folder
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=getattr(torch, dtype))
    _fix_initialisation(model)
    model.save_pretrained(out_folder)
    processor.save_pretrained(out_folder)
    marker.write_text(description)
    del model
    return out_folder


@torch.no_grad()
def _fix_initialisation(model: torch.nn.Module) -> None:
    """BLIP-2 built from its config starts its query tokens at zero, which with the Q-Former's LayerNorm
    eps of 1e-12 gives gradients of ~1e11; the released model's are of order 0.02."""
    query_tokens = getattr(model, "query_tokens", None)
    if query_tokens is not None:
        query_tokens.normal_(0.0, 0.02)
