"""The recipes' one way to say something: `logger = get_logger(__name__)` in each module.

Lines go out once, from the main process (accelerate's logger), to stdout as plain lines written above any
progress bar, at INFO. Also here: the one third-party log record the recipes silence. `setup_logging` runs
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


# bitsandbytes, on a CPU with AVX512-BF16, tries to download an optional CPU kernel for 4-bit matmuls with the
# `kernels` package and warns when it cannot ("Failed to load CPU gemm_4bit_forward from kernels-community").
# Offline (the recipes' normal case) `kernels` could not fetch it either, and bitsandbytes falls back to its
# own kernel: the warning asks for nothing the user can act on, so exactly that record is dropped.
BITSANDBYTES_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
KERNELS_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"


class _NoKernelsNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(KERNELS_NOTICE)


def _silence_kernels_notice() -> None:
    bitsandbytes_logger = logging.getLogger(BITSANDBYTES_CPU_LOGGER)
    if not any(isinstance(f, _NoKernelsNotice) for f in bitsandbytes_logger.filters):
        bitsandbytes_logger.addFilter(_NoKernelsNotice())


def setup_logging() -> None:
    """Once per process, when the package is imported (before anything imports bitsandbytes); idempotent."""
    _send_package_lines_to_stdout()
    _silence_kernels_notice()
