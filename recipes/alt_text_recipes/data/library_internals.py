"""The private names of the libraries we build on that the recipes still use, in one place.

None has a public replacement in the pinned versions; each function says why it needs its name.
tests/test_architecture.py checks that every name in PRIVATE_NAMES still exists, so an upgrade that renames or
removes one fails there, naming it, rather than deep in a run. Everything else the recipes do with transformers
goes through public API (Trainer methods and callbacks). The libraries are imported where used: the package's
first import (the logger) must stay light.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

PRIVATE_NAMES = (
    "transformers.integrations.deepspeed._hf_deepspeed_config_weak_ref",
    "transformers.Trainer()._eval_dataloaders",
    "transformers.integrations.TensorBoardCallback._init_summary_writer",
    "transformers.PretrainedConfig()._attn_implementation",
    "torch.utils.data.DataLoader()._iterator",
    "torch.utils.data.dataloader._MultiProcessingDataLoaderIter._shutdown_workers",
    "torch.cuda._get_nvml_device_index",
    "accelerate.PartialState._shared_state",
    "argparse.ArgumentParser()._option_string_actions",
)


@contextmanager
def without_zero3_init():
    """Build a model plainly even after a ZeRO-3 `--deepspeed` config was registered.

    TrainingArguments with a ZeRO-3 config register it module-wide (a weak reference in
    transformers.integrations.deepspeed) and every later `from_config` then builds under deepspeed.zero.Init,
    which a meta-device model cannot. transformers has a public `unset_hf_deepspeed_config` but no public way to
    put the registered config back, which the run itself needs afterwards."""
    from transformers.integrations import deepspeed as hf_deepspeed

    registered = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = registered


def shut_down_workers(loader: Any) -> None:
    """Stop the worker processes of a DataLoader with persistent workers now. torch has no public call for it:
    left to the interpreter's exit, each worker stalls 5 s (torch 2.13, accelerate 1.15)."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
        loader._iterator = None


def cached_eval_dataloaders(trainer: Any) -> list:
    """The evaluation DataLoaders the Trainer keeps between evaluations (with persistent workers), which it
    exposes only as a private attribute."""
    return list(getattr(trainer, "_eval_dataloaders", {}).values())


def forget_eval_dataloaders(trainer: Any) -> None:
    if hasattr(trainer, "_eval_dataloaders"):
        trainer._eval_dataloaders = {}


def open_tensorboard_writer(callback: Any, args: Any) -> None:
    """Reopen the TensorBoard callback's writer (closed when training ends, for an evaluate() after train())
    in the callback's own run folder, which only its private initialiser knows how to choose."""
    callback._init_summary_writer(args)


def attention_implementation(config: Any) -> str:
    """The attention a loaded model runs (sdpa, eager, ...): transformers keeps it only in a private field."""
    return config._attn_implementation


def nvml_device_index(device: Any) -> int:
    """The NVML index of a CUDA device: NVML numbers every GPU of the machine, CUDA only the visible ones
    (CUDA_VISIBLE_DEVICES), and torch maps one to the other only in a private helper."""
    import torch

    return torch.cuda._get_nvml_device_index(device)


def processes_initialized() -> bool:
    """Whether accelerate's process state exists yet, without creating it (which `PartialState()` would)."""
    from accelerate import PartialState

    return bool(PartialState._shared_state)


def option_names(parser: Any) -> list[str]:
    """Every option string the parser knows (`--learning_rate`, `--learning-rate`, ...): argparse lists them only
    in a private mapping, and the 'did you mean' hint needs them all."""
    return list(parser._option_string_actions)
