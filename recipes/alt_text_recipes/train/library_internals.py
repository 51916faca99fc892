"""The private names of the libraries we build on that the recipes still use, in one place.

Each has no public replacement in the pinned versions; tests/test_architecture.py checks that every one of them
still exists, so an upgrade that renames or removes one fails there with the name, not deep in a run.
Everything else the recipes do with transformers goes through public API (Trainer methods and callbacks).
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager

from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.integrations import deepspeed as hf_deepspeed

# Every private name used below, as tests/test_architecture.py checks that each still exists.
PRIVATE_NAMES = (
    "transformers.integrations.deepspeed._hf_deepspeed_config_weak_ref",
    "transformers.Trainer()._eval_dataloaders",
    "torch.utils.data.DataLoader()._iterator",
    "torch.utils.data.dataloader._MultiProcessingDataLoaderIter._shutdown_workers",
    "argparse.ArgumentParser()._option_string_actions",
)


@contextmanager
def without_zero3_init():
    """Build a model plainly even after a ZeRO-3 `--deepspeed` config was registered.

    TrainingArguments with a ZeRO-3 config register it module-wide (a weak reference in
    transformers.integrations.deepspeed) and every later `from_config` then builds under deepspeed.zero.Init,
    which a meta-device model cannot. transformers has a public `unset_hf_deepspeed_config` but no public way to
    put the registered config back, which the run itself needs afterwards."""
    registered = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = registered


def shut_down_workers(loader: DataLoader | None) -> None:
    """Stop the worker processes of a DataLoader with persistent workers now. torch has no public call for it:
    left to the interpreter's exit, each worker stalls 5 s (torch 2.13, accelerate 1.15)."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
        loader._iterator = None


def cached_eval_dataloaders(trainer: Trainer) -> list[DataLoader]:
    """The evaluation DataLoaders the Trainer keeps between evaluations (with persistent workers), which it
    exposes only as a private attribute."""
    return list(getattr(trainer, "_eval_dataloaders", {}).values())


def forget_eval_dataloaders(trainer: Trainer) -> None:
    if hasattr(trainer, "_eval_dataloaders"):
        trainer._eval_dataloaders = {}


def option_names(parser: argparse.ArgumentParser) -> list[str]:
    """Every option string the parser knows (`--learning_rate`, `--learning-rate`, ...): argparse lists them only
    in a private mapping, and the 'did you mean' hint needs them all."""
    return list(parser._option_string_actions)
