"""Shared fixtures: the embedded tiny models and food photos, offline, on CPU; GPU-only tests (`gpu` marker)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_MODELS = {"opt": REPO_ROOT / "data/models/tiny-blip2-opt", "t5": REPO_ROOT / "data/models/tiny-blip2-t5"}
# The chat-template families' twins (recipes/alt_text_recipes/families.py).
CHAT_TWINS = {"idefics2": REPO_ROOT / "data/models/tiny-idefics2", "llava": REPO_ROOT / "data/models/tiny-llava"}
ALL_TWINS = {"blip2-opt": TINY_MODELS["opt"], "blip2-t5": TINY_MODELS["t5"], **CHAT_TWINS}
DATASET = REPO_ROOT / "data/gourmetgram-mini"


@pytest.fixture(scope="session")
def food_splits():
    from alt_text_recipes.data import load_caption_dataset

    return load_caption_dataset(str(DATASET))


@pytest.fixture(scope="session", params=sorted(TINY_MODELS))
def tiny_model(request):
    """(family, model, processor) for each tiny BLIP-2."""
    from alt_text_recipes.modeling import load_trained

    model, processor = load_trained(TINY_MODELS[request.param])
    return request.param, model, processor


def logged_losses(output_dir: Path) -> list[float]:
    """The training losses a run logged (its trainer_state.json), in step order."""
    history = json.loads((Path(output_dir) / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def run_recipe(recipe: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Launch a recipe as a user would, in its own process."""
    command = [sys.executable, str(REPO_ROOT / "recipes" / f"{recipe}.py"), *args]
    return subprocess.run(
        command,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def free_port() -> int:
    """A port no one listens on: each multi-process test its own (tests may run side by side, pytest -n)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need a CUDA GPU. With one they run like any other test (`make test` runs them,
    `make test-gpu` / `pytest -m gpu` only them). Without one they are deselected, and counted as deselected
    in the summary line; asking for them with `-m gpu` on such a machine is an error that says why."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items or _cuda_available():
        return
    markexpr = config.option.markexpr or ""
    if re.search(r"\bgpu\b", markexpr) and not re.search(r"\bnot\s+gpu\b", markexpr):
        raise pytest.UsageError(
            f"-m '{markexpr}' asks for the GPU tests, and this machine has no CUDA GPU "
            "(torch.cuda.is_available() is False): run them on a GPU host; here, `make test`."
        )
    config.hook.pytest_deselected(items=gpu_items)
    items[:] = [item for item in items if not item.get_closest_marker("gpu")]
