"""The recipes' one way to say something: `logger = get_logger(__name__)` in each module.

Lines go out once, from the main process (accelerate's logger), to stdout as plain lines written above any
progress bar, at INFO. Also here: the third-party log records the recipes silence. `setup_logging` runs
when the package is imported (alt_text_recipes/__init__.py).
"""

from __future__ import annotations

import logging
import sys

from accelerate import PartialState
from accelerate.logging import MultiProcessAdapter
from accelerate.logging import get_logger as accelerate_logger
from tqdm.auto import tqdm

from alt_text_recipes.data.library_internals import processes_initialized

PACKAGE = __name__.partition(".")[0]  # alt_text_recipes: every module of the package


class RecipeLogger(MultiProcessAdapter):
    """accelerate's main-process-only logger, usable before the Trainer sets up the processes and without
    its "[RANK n]" tag (the lines come from the main process; the tests and tools read them as printed)."""

    def log(self, level: int, msg: object, *args, **kwargs) -> None:
        if not processes_initialized():  # a tool or test calling recipe code outside training: one process
            PartialState()
        super().log(level, msg, *args, **kwargs)

    def process(self, msg, kwargs):
        return logging.LoggerAdapter.process(self, msg, kwargs)


class _AboveProgressBars(logging.Handler):
    """Each line to the current sys.stdout (pytest's capsys swaps it), written above tqdm's bars."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stdout)
            sys.stdout.flush()
        except Exception:  # noqa: BLE001 - as logging.StreamHandler: a failed line must not stop training
            self.handleError(record)


def _send_package_lines_to_stdout() -> None:
    """The package's lines at INFO, as bare messages, not passed on to the root logger."""
    package_logger = logging.getLogger(PACKAGE)
    if any(isinstance(handler, _AboveProgressBars) for handler in package_logger.handlers):
        return
    handler = _AboveProgressBars()
    handler.setFormatter(logging.Formatter("%(message)s"))
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    package_logger.propagate = False


def get_logger(name: str) -> RecipeLogger:
    """The logger for module `name` of this package."""
    return RecipeLogger(accelerate_logger(name).logger, {})


class _DropNotice(logging.Filter):
    """Drops the records of one logger whose message starts with `notice`, when `applies()` says so."""

    def __init__(self, notice: str, applies=lambda: True) -> None:
        super().__init__()
        self.notice, self.applies = notice, applies

    def filter(self, record: logging.LogRecord) -> bool:
        return not (str(record.msg).startswith(self.notice) and self.applies())


def _no_cuda() -> bool:
    import torch  # imported by then: DeepSpeed logs while it imports torch's accelerators

    return not torch.cuda.is_available()


# The third-party notices the recipes drop, each asking for nothing the user can act on (logger, message start,
# when). bitsandbytes, on a CPU with AVX512-BF16, tries to download an optional CPU kernel for 4-bit matmuls with
# the `kernels` package and warns when it cannot: offline (the recipes' normal case) `kernels` could not fetch it
# either, and bitsandbytes falls back to its own kernel. DeepSpeed, imported by every run (transformers' Trainer,
# accelerate), warns on a machine without CUDA that it uses the CPU: on such a machine that is the point (with
# CUDA visible the same line means it failed to find the GPU, and is kept).
BITSANDBYTES_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
KERNELS_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"
DEEPSPEED_LOGGER = "DeepSpeed"
DEEPSPEED_CPU_NOTICE = "Setting accelerator to CPU"
NOTICES = ((BITSANDBYTES_CPU_LOGGER, KERNELS_NOTICE, lambda: True), (DEEPSPEED_LOGGER, DEEPSPEED_CPU_NOTICE, _no_cuda))


def _drop_notices() -> None:
    for name, notice, applies in NOTICES:
        library_logger = logging.getLogger(name)  # the logger the library gets when it imports, filter and all
        if not any(isinstance(f, _DropNotice) and f.notice == notice for f in library_logger.filters):
            library_logger.addFilter(_DropNotice(notice, applies))


def setup_logging() -> None:
    """Once per process, when the package is imported (before anything imports bitsandbytes or DeepSpeed);
    idempotent."""
    _send_package_lines_to_stdout()
    _drop_notices()
