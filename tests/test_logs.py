"""The recipes' one logger, and the third-party notices it silences."""

from __future__ import annotations

import logging

import torch

import alt_text_recipes  # noqa: F401 - importing the package sets up logging
from alt_text_recipes.data.logs import (
    BITSANDBYTES_CPU_LOGGER,
    DEEPSPEED_CPU_NOTICE,
    DEEPSPEED_LOGGER,
    KERNELS_NOTICE,
    get_logger,
)


def _record(message: str, *args, logger: str = BITSANDBYTES_CPU_LOGGER) -> logging.LogRecord:
    return logging.LogRecord(logger, logging.WARNING, __file__, 1, message, args, None)


def test_the_bitsandbytes_kernels_notice_is_dropped_and_its_other_records_pass():
    bitsandbytes_logger = logging.getLogger(BITSANDBYTES_CPU_LOGGER)
    notice = _record(KERNELS_NOTICE + ": %s. Please make sure you already `pip install kernels`", "no module")
    assert not bitsandbytes_logger.filter(notice)
    assert bitsandbytes_logger.filter(_record("CPU 4-bit kernel: something else went wrong"))


def test_deepspeeds_cpu_notice_is_dropped_only_where_there_is_no_cuda(monkeypatch):
    deepspeed_logger = logging.getLogger(DEEPSPEED_LOGGER)  # the one DeepSpeed logs to (deepspeed.utils.logger)
    notice = _record(DEEPSPEED_CPU_NOTICE + ". If you have GPU or other accelerator, ...", logger=DEEPSPEED_LOGGER)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not deepspeed_logger.filter(notice)
    assert deepspeed_logger.filter(_record("Setting ds_accelerator to cpu (auto detect)", logger=DEEPSPEED_LOGGER))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU DeepSpeed did not find: worth saying
    assert deepspeed_logger.filter(notice)


def test_recipe_lines_reach_stdout_bare_once_without_a_trainer(capsys):
    get_logger("alt_text_recipes.test").info("[memory] step 0 | a line")
    logging.getLogger("alt_text_recipes.test").debug("below INFO: not shown")
    assert capsys.readouterr().out == "[memory] step 0 | a line\n"
