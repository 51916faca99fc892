"""A model's configuration and its meta-device twin, read without weights or network."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, PretrainedConfig

from alt_text_recipes.data.paths import SHIPPED_CONFIGS, resolve_local, shipped_config


def load_config(name_or_path: str) -> PretrainedConfig:
    """A model's configuration without its weights: shipped copy, local folder, or the Hub."""
    shipped = shipped_config(name_or_path)
    if shipped is not None:  # a local folder: no Hub request
        return AutoConfig.from_pretrained(shipped)
    return AutoConfig.from_pretrained(resolve_local(name_or_path))


@contextmanager
def _without_zero3_init():
    """TrainingArguments with a ZeRO-3 --deepspeed config register it globally, and transformers then builds
    every model under deepspeed.zero.Init; a meta-device model must be built plainly."""
    from transformers.integrations import deepspeed as hf_deepspeed

    registered = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = registered


def meta_model(config: PretrainedConfig) -> torch.nn.Module:
    with torch.device("meta"), _without_zero3_init():
        return AutoModelForImageTextToText.from_config(config)


def image_processor_settings(name_or_path: str) -> dict:
    """The image processor's saved settings (shipped beside the config, or in the model's folder); {} if none."""
    for folder in (SHIPPED_CONFIGS / name_or_path.split("/")[-1], Path(resolve_local(name_or_path))):
        if (folder / "processor_config.json").is_file():
            return json.loads((folder / "processor_config.json").read_text()).get("image_processor", {})
        if (folder / "preprocessor_config.json").is_file():
            return json.loads((folder / "preprocessor_config.json").read_text())
    return {}
