"""Where the repository's embedded data and models live, so defaults work from any directory."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
EMBEDDED_DATASET = "data/gourmetgram-mini"
SHIPPED_CONFIGS = REPO_ROOT / "data" / "model_configs"  # configs of real models, for estimates without the Hub


def resolve_local(name_or_path: str) -> str:
    """Return `name_or_path` as a local folder if it is one (relative to the current directory or to
    the repository root); otherwise return it unchanged, as a Hub id."""
    for candidate in (Path(name_or_path), REPO_ROOT / name_or_path):
        if candidate.is_dir():
            return str(candidate)
    return name_or_path


def portable_name(name_or_path: str) -> str:
    """`name_or_path` as it loads from any folder: the absolute path of a local folder (as `resolve_local` finds
    it), else unchanged (a Hub id). What a saved output records of the model it was made from."""
    local = resolve_local(name_or_path)
    return os.path.abspath(local) if Path(local).is_dir() else name_or_path


def places_looked() -> str:
    """Where `resolve_local` looks, for messages: the current directory, and the repository when it is elsewhere."""
    here = Path.cwd()
    return str(here) if here.resolve() == REPO_ROOT.resolve() else f"{here} and {REPO_ROOT}"


def is_local(name_or_path: str) -> bool:
    return Path(resolve_local(name_or_path)).is_dir()


def shipped_config(name_or_path: str) -> Path | None:
    """The folder of a real model's shipped config (data/model_configs/<last part of the id>), if there is one."""
    folder = SHIPPED_CONFIGS / name_or_path.rstrip("/").split("/")[-1]
    return folder if (folder / "config.json").is_file() else None


def file_in_the_way(folder: str | Path) -> Path | None:
    """The file that stops `folder` from being made (it, or a folder above it, is a file), if any."""
    for candidate in (Path(folder), *Path(folder).parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None
