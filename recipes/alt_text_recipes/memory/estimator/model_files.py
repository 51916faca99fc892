"""What a model's folder says beyond its configuration: the image processor's settings."""

from __future__ import annotations

import json
from pathlib import Path

from alt_text_recipes.data.paths import SHIPPED_CONFIGS, resolve_local


def image_processor_settings(name_or_path: str) -> dict:
    """The image processor's saved settings (shipped beside the config, or in the model's folder); {} if none."""
    for folder in (SHIPPED_CONFIGS / name_or_path.split("/")[-1], Path(resolve_local(name_or_path))):
        if (folder / "processor_config.json").is_file():
            return json.loads((folder / "processor_config.json").read_text()).get("image_processor", {})
        if (folder / "preprocessor_config.json").is_file():
            return json.loads((folder / "preprocessor_config.json").read_text())
    return {}
