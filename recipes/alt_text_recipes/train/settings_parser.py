"""The parser of every entry point's settings: TrlParser (flags, and a `--config` YAML whose keys set any field)
with the project's rules. A preset's description (PRESET_KEYS) is read into `PresetInfo`, not taken as settings;
every bool flag alone means true; a command-line error or an unknown setting is one line that names the nearest
known setting, never argparse's full usage or a traceback. The recipes' own dataclasses live in arguments.py."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass
from typing import Any

from trl import TrlParser

from alt_text_recipes.data.errors import RecipeError
from alt_text_recipes.data.library_internals import option_names
from alt_text_recipes.train.training_arguments import _has_accelerator

PRESET_KEYS = ("title", "recipe", "launch", "accelerate_config")


@dataclass(frozen=True)
class PresetInfo:
    """What a YAML preset says about itself, for the tools that list, launch and estimate presets."""

    title: str | None = None  # a one-line description
    recipe: str | None = None  # the recipe it is for (full_ft, lora, qlora, two_stage); checked at start
    launch: str | None = None  # the command it is meant to be run with
    accelerate_config: str | None = None  # the accelerate config it is launched with (the estimator reads it)


class SettingsParser(TrlParser):
    """TrlParser that keeps a preset's description out of the settings, takes every bool flag alone as true,
    honours a bool field's default_factory, and ends a command-line error (a bad choice, a value of the wrong
    type, an ambiguous abbreviation) in its one line: argparse's own `error` prints the whole usage first, 150
    lines for a recipe."""

    def __init__(self, dataclass_types, **kwargs):
        super().__init__(dataclass_types, **kwargs)
        self.preset = PresetInfo()
        # HfArgumentParser gives a bool field with a default_factory the default False; the factory (the CPU
        # when there is no GPU) is called here, when the parser is built, as it is for every other type.
        if dataclasses.is_dataclass(dataclass_types):  # one dataclass, as HfArgumentParser also takes it
            dataclass_types = [dataclass_types]
        factories = {
            settings_field.name: settings_field.default_factory
            for dataclass_type in dataclass_types
            for settings_field in dataclasses.fields(dataclass_type)
            if settings_field.init and settings_field.default_factory is not dataclasses.MISSING
        }
        bool_fields = {
            name
            for dataclass_type in dataclass_types
            for name, hint in typing.get_type_hints(dataclass_type).items()
            if hint in (bool, bool | None)
        }
        for action in self._actions:
            if action.dest in bool_fields and action.nargs is None:
                # HfArgumentParser makes a `bool | None` field defaulting to None (--use_cpu of alt_text.py,
                # --tf32, --disable_tqdm...) a flag that must be given a value; like every other bool, alone it
                # means true.
                action.nargs, action.const = "?", True
            if action.dest in factories and action.const is True:  # a bool flag: `--use_cpu` alone is true
                action.default = factories[action.dest]()

    def set_defaults_with_config(self, **config) -> list[str]:
        """A YAML preset's settings; its description (PRESET_KEYS) goes to `self.preset`."""
        self.preset = PresetInfo(**{key: config.pop(key) for key in PRESET_KEYS if key in config})
        return super().set_defaults_with_config(**config)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n`--help` lists every setting.\n")


def parse_tool_args(arguments: type, args: list[str] | None = None) -> Any:
    """One dataclass of a tool (alt_text.py, evaluate_captions.py, merge_adapter.py) from its flags and --config
    YAML; a bad setting is a `RecipeError` (one line), not the parser's traceback."""
    (parsed,) = parse_checked(SettingsParser(arguments), args)
    return parsed


def parse_checked(parser: TrlParser, args: list[str] | None = None) -> tuple:
    """The parser's dataclasses from the flags and the --config YAML. A setting the parser does not know (a typo,
    most often) is named with where it came from and the nearest known name; a value the dataclasses refuse
    is one `RecipeError` line."""
    try:
        *parsed, from_config, from_command_line = parser.parse_args_and_config(
            args, return_remaining_strings=True, separate_remaining_strings=True
        )
    except RecipeError:
        raise
    except ValueError as error:  # TrainingArguments / ModelConfig checks: one line, not their traceback
        hint = " This machine has no GPU." if not _has_accelerator() and "gpu" in str(error).lower() else ""
        raise RecipeError(f"invalid settings: {error}{hint}") from None
    unknown = [
        unknown_settings(parser, strings, where)
        for strings, where in ((from_config, "in the config file"), (from_command_line, "on the command line"))
        if strings
    ]
    if unknown:
        raise RecipeError("; ".join(unknown) + ". `--help` lists every setting.")
    return tuple(parsed)


def unknown_settings(parser: TrlParser, strings: list[str], where: str) -> str:
    """`--lerning_rate 1e-4` -> 'unknown setting on the command line: --lerning_rate (did you mean
    --learning_rate?)'; a config file's keys are named without the dashes, as they are written there."""
    # The underscore spellings only: each also has a dashed alias (--learning-rate) that would be suggested twice.
    known = [option for option in option_names(parser) if option.startswith("--") and "-" not in option[2:]]
    names = [string for string in strings if string.startswith("--")]
    if not names:
        return f"unexpected value{'s' if len(strings) > 1 else ''} {where}: {' '.join(strings)}"
    dashes = "" if where == "in the config file" else "--"
    described = []
    for name in names:
        flag = name.split("=", 1)[0]
        nearest = " or ".join(
            dashes + option[2:] for option in difflib.get_close_matches(flag, known, n=2, cutoff=0.8)
        )
        text = dashes + flag.removeprefix("--")
        described.append(f"{text} (did you mean {nearest}?)" if nearest else text)
    return f"unknown setting{'s' if len(described) > 1 else ''} {where}: {', '.join(described)}"
