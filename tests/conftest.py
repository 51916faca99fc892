"""Shared fixtures: the embedded tiny models and food photos, offline, on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "recipes"))
sys.path.insert(0, str(REPO_ROOT / "data"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_MODELS = {"opt": REPO_ROOT / "data/models/tiny-blip2-opt", "t5": REPO_ROOT / "data/models/tiny-blip2-t5"}
# The chat-template families' twins (recipes/core/families.py).
CHAT_TWINS = {"idefics2": REPO_ROOT / "data/models/tiny-idefics2", "llava": REPO_ROOT / "data/models/tiny-llava"}
ALL_TWINS = {"blip2-opt": TINY_MODELS["opt"], "blip2-t5": TINY_MODELS["t5"], **CHAT_TWINS}
DATASET = REPO_ROOT / "data/gourmetgram-mini"


@pytest.fixture(scope="session")
def food_splits():
    from core.data import load_caption_dataset

    return load_caption_dataset(str(DATASET))


@pytest.fixture(scope="session", params=sorted(TINY_MODELS))
def tiny_model(request):
    """(family, model, processor) for each tiny BLIP-2."""
    from core.modeling import load_trained

    model, processor = load_trained(TINY_MODELS[request.param])
    return request.param, model, processor


def logged_losses(output_dir: Path) -> list[float]:
    """The training losses a run logged (its trainer_state.json), in step order."""
    history = json.loads((Path(output_dir) / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def run_recipe(recipe: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Launch a recipe as a user would, in its own process."""
    command = [sys.executable, str(REPO_ROOT / "recipes" / f"{recipe}.py"), *args]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
