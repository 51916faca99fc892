"""The command lines behave as users type them: every bool flag works alone, a launch that asked for several
processes and got one says so, estimate.py lists its flags, refuses GPUs without a strategy and says what to
try when an estimate does not fit, and no entry point prints a library's notice meant for no one."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import typing

import pytest
from alt_text import AltTextArguments  # recipes/alt_text.py
from estimate import EstimatorArguments, run_estimate  # recipes/estimate.py
from evaluate_captions import EvaluationArguments  # recipes/evaluate_captions.py
from merge_adapter import MergeArguments  # recipes/merge_adapter.py

from alt_text_recipes.data.errors import RecipeError
from alt_text_recipes.data.library_internals import option_names
from alt_text_recipes.data.logs import DEEPSPEED_CPU_NOTICE, KERNELS_NOTICE
from alt_text_recipes.memory.oom_advice import next_techniques
from alt_text_recipes.train.arguments import make_parser, parse_recipe_args
from alt_text_recipes.train.parallel import lone_launch_warning
from alt_text_recipes.train.registry import RECIPES
from alt_text_recipes.train.settings_parser import SettingsParser, parse_tool_args
from alt_text_recipes.train.stages import TwoStageArguments

from conftest import REPO_ROOT

TINY_LORA = ["lora", "--config", "recipes/configs/tiny/lora.yaml", "--output_dir", "unused"]


def _entry_point_parsers() -> dict[str, SettingsParser]:
    """The parser of every entry point that takes settings: each recipe, the estimator, and the tools."""
    parsers = {
        recipe: make_parser(recipe, (TwoStageArguments,) if recipe == "two_stage" else ()) for recipe in RECIPES
    }
    parsers["estimate"] = make_parser("lora", (EstimatorArguments,))
    for name, arguments in (("alt_text", AltTextArguments), ("evaluate_captions", EvaluationArguments)):
        parsers[name] = SettingsParser(arguments)
    return parsers


def _bool_flags(parser: SettingsParser) -> list[str]:
    """The flag of every bool field (`bool` or `bool | None`) of the parser's dataclasses."""
    fields = {
        name
        for dataclass_type in parser.dataclass_types
        for name, hint in typing.get_type_hints(dataclass_type).items()
        if hint in (bool, bool | None)
    }
    return sorted(f"--{name}" for name in fields if f"--{name}" in option_names(parser))


@pytest.mark.parametrize("entry_point", ["full_ft", "lora", "qlora", "two_stage", "estimate", "alt_text"])
def test_every_bool_flag_alone_means_true(entry_point):
    parser = _entry_point_parsers()[entry_point]
    flags = _bool_flags(parser)
    assert len(flags) >= 2
    for flag in flags:
        namespace, _ = parser.parse_known_args([flag])
        assert getattr(namespace, flag[2:]) is True, flag
        namespace, _ = parser.parse_known_args([flag, "false"])
        assert getattr(namespace, flag[2:]) is False, flag


def test_alt_text_takes_use_cpu_alone_as_the_recipes_do():
    assert parse_tool_args(AltTextArguments, ["--use_cpu", "--images", "photos/"]).use_cpu is True
    assert parse_tool_args(AltTextArguments, ["--images", "photos/"]).use_cpu is None  # decided by the machine
    _, training_args, _ = parse_recipe_args("lora", ["--use_cpu", "--greater_is_better", "--disable_tqdm"])
    assert training_args.use_cpu and training_args.greater_is_better and training_args.disable_tqdm


def test_merge_adapter_has_no_bool_flag_to_miss():
    assert not [f for f in dataclasses.fields(MergeArguments) if f.type in ("bool", "bool | None")]


# --- A launch that asked for several processes and got one ---------------------------------------------------


def test_a_lone_process_of_a_several_process_launch_is_told_how_to_get_them():
    # What accelerate's simple launcher leaves a process it starts alone with --num_processes 2, against torchrun's.
    simple = {"ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_USE_CPU": "False", "MASTER_ADDR": "127.0.0.1"}
    warning = lone_launch_warning(simple)
    assert warning and "--multi_gpu" in warning and "accelerate config" in warning
    assert lone_launch_warning({**simple, "WORLD_SIZE": "2", "RANK": "0"}) is None
    assert lone_launch_warning({"ACCELERATE_MIXED_PRECISION": "no"}) is None  # --num_processes 1
    assert lone_launch_warning({}) is None  # python recipes/lora.py


def test_accelerate_launch_without_multi_gpu_starts_one_process_and_it_warns(tmp_path):
    """The real launcher: `accelerate launch --num_processes 2` without --multi_gpu (and no config file)."""
    script = tmp_path / "which.py"
    script.write_text(
        "import os\nfrom alt_text_recipes.train.parallel import lone_launch_warning\n"
        "print('started', os.environ.get('WORLD_SIZE'), '|', lone_launch_warning())\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "CUDA_VISIBLE_DEVICES": ""}  # no default config
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", str(script)]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("started")]
    assert len(lines) == 1 and lines[0].startswith("started None | accelerate launch was asked for more than one")


# --- estimate.py -----------------------------------------------------------------------------------------------


def test_estimate_help_lists_every_flag(capsys):
    run_estimate(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: python recipes/estimate.py {full_ft,lora,qlora}")
    for flag in ("--gpu_memory", "--num_gpus", "--strategy", "--learning_rate", "--lora_r", "--config"):
        assert flag in out, flag


def test_estimate_refuses_several_gpus_without_a_strategy():
    with pytest.raises(RecipeError, match=r"2 GPUs \(--num_gpus\) but no strategy.*--strategy ddp, fsdp"):
        run_estimate([*TINY_LORA, "--num_gpus", "2"])
    assert run_estimate([*TINY_LORA, "--num_gpus", "2", "--strategy", "ddp"]).num_gpus == 2


def test_an_estimate_that_does_not_fit_lists_what_to_try_with_predictions(capsys):
    """The techniques a run that runs out of memory suggests (memory/oom_advice.py), each estimated."""
    _, training_args, model_args = parse_recipe_args("lora", TINY_LORA[1:])
    techniques = [flags for flags, _, _ in next_techniques(training_args, model_args)]
    assert not run_estimate([*TINY_LORA, "--gpu_memory", "0.001"]).fits
    out = capsys.readouterr().out
    assert "-> OOM on a 0.001 GB GPU\n  Try, one at a time (predicted GB per GPU with only that change):" in out
    for flags in techniques:
        assert f"    {flags}: " in out and "GB (still too much)" in out
    run_estimate([*TINY_LORA, "--gpu_memory", "0.001", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert [entry["flags"] for entry in report["next_techniques"]] == techniques
    assert all(entry["total_gb"] > 0 and entry["fits"] is False for entry in report["next_techniques"])
    run_estimate(TINY_LORA[:])
    assert "Try, one at a time" not in capsys.readouterr().out  # it fits: nothing to try


# --- No library notices ----------------------------------------------------------------------------------------


def test_estimate_prints_no_library_notices():
    """A CPU estimate imports bitsandbytes and DeepSpeed (to measure the process a run is); started cold."""
    command = [sys.executable, "recipes/estimate.py", *TINY_LORA, "--device", "cpu"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "-> fits on this CPU run" in result.stdout
    for notice in (DEEPSPEED_CPU_NOTICE, KERNELS_NOTICE):
        assert notice not in result.stdout + result.stderr
