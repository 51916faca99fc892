"""Presets, the CLI, the README and the docs stay true to each other."""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import sys

import pytest
import yaml

from alt_text_recipes.data.errors import RecipeError
from alt_text_recipes.train.arguments import parse_recipe_args
from alt_text_recipes.train.loop import main
from alt_text_recipes.train.stages import TwoStageArguments

from conftest import REPO_ROOT

PRESETS = sorted((REPO_ROOT / "recipes" / "configs").rglob("*.yaml"))


def _recipe_of(preset) -> str:
    """The recipe a preset names in its `recipe:` key."""
    recipe = yaml.safe_load(preset.read_text()).get("recipe")
    assert recipe, f"{preset} has no recipe key"
    return recipe


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_preset_parses_for_its_recipe(preset):
    recipe = _recipe_of(preset)
    assert (REPO_ROOT / "recipes" / f"{recipe}.py").exists()
    extra = (TwoStageArguments,) if recipe == "two_stage" else ()
    script_args, training_args, model_args = parse_recipe_args(recipe, ["--config", str(preset)], extra=extra)[:3]
    assert training_args.remove_unused_columns is False
    assert model_args.model_name_or_path


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_preset_describes_itself_in_keys(preset):
    """title, recipe and launch are data: the launch command runs this preset, under its accelerate config."""
    settings = yaml.safe_load(preset.read_text())
    assert settings["title"] and "\n" not in settings["title"]
    launch = settings["launch"]
    assert f"--config {preset.relative_to(REPO_ROOT)}" in launch
    if not launch.startswith("python benchmarks/"):  # a benchmark's own command names no recipe script
        assert f"recipes/{settings['recipe']}.py --config" in launch
    accelerate_config = settings.get("accelerate_config")
    assert ("accelerate launch" in launch) == bool(accelerate_config)
    if accelerate_config:
        assert f"accelerate launch --config_file {accelerate_config} " in launch


def test_matrix_titles_are_read_from_the_presets():
    from alt_text_recipes.outputs.experiment_matrix import load_preset

    assert load_preset("baseline").title == "baseline: OPT-2.7B, batch 64, fp32, AdamW"


def test_precedence_recipe_defaults_then_yaml_then_cli():
    preset = str(REPO_ROOT / "recipes/configs/tiny/lora.yaml")
    _, training_args, model_args = parse_recipe_args("lora", ["--config", preset])
    assert model_args.use_peft is True  # recipe default
    assert training_args.learning_rate == 3e-3  # YAML over the recipe's 2e-4
    _, training_args, _ = parse_recipe_args("lora", ["--config", preset, "--learning_rate", "0.5"])
    assert training_args.learning_rate == 0.5  # CLI over YAML


def test_real_model_is_the_default():
    _, training_args, model_args = parse_recipe_args("qlora", [])
    assert model_args.model_name_or_path == "Salesforce/blip2-opt-2.7b"
    assert model_args.load_in_4bit and model_args.use_peft and training_args.bf16


def test_preset_for_another_recipe_is_refused():
    with pytest.raises(RecipeError, match="this preset is for recipes/lora.py"):
        parse_recipe_args("full_ft", ["--config", str(REPO_ROOT / "recipes/configs/matrix/lora.yaml")])


def test_quantized_full_fine_tuning_is_refused():
    with pytest.raises(RecipeError, match="only be trained with LoRA"):
        parse_recipe_args("full_ft", ["--load_in_4bit", "true"])


@pytest.mark.parametrize("recipe", ["full_ft", "lora", "qlora"])
def test_help_lists_script_trainer_and_model_flags(recipe):
    from alt_text_recipes.train.arguments import make_parser

    text = make_parser(recipe).format_help()
    for flag in (
        "--dataset_name",
        "--image_column",
        "--gradient_accumulation_steps",
        "--lora_r",
        "--dtype",
        "--scale_lr",
        "--device_map",
    ):
        assert flag in text


def test_help_from_the_command_line(monkeypatch, capsys):
    # `python recipes/lora.py --help`, through the entry point the script calls, in this process.
    monkeypatch.setattr(sys, "argv", ["recipes/lora.py", "--help"])
    with pytest.raises(SystemExit) as exit:
        main("lora")
    assert exit.value.code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("usage: lora.py") and "--dataset_name" in printed and "--lora_target_modules" in printed


# README.md and the guides under docs/: what they name must exist, and their links must lead somewhere.
DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
NAMED_PATH = re.compile(r"\b((?:recipes|data|docs|scripts|accelerate_configs|ds_configs|tests|benchmarks)/[\w./-]*\w)")
URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+")
CODE_BLOCK = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _doc_name(doc) -> str:
    return str(doc.relative_to(REPO_ROOT))


def _anchors(doc) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#{1,6} +(.+?) *$", CODE_BLOCK.sub("", doc.read_text()), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_every_path_the_readme_names_exists():
    """Every repository path README.md or a docs/ page names exists (code blocks included: they are commands)."""
    assert len(DOCS) > 5, "the guides in docs/ are missing"
    missing = []
    for doc in DOCS:
        text = URL.sub("", doc.read_text())
        names = NAMED_PATH.finditer(text)
        # a name followed by `-<placeholder>` or `*` is a pattern (benchmarks/results/gpu-<gpu name>/), not a file
        paths = {m.group(1) for m in names if not text[m.end() : m.end() + 2].startswith(("-<", "*"))}
        if doc.name == "README.md":
            assert len(paths) > 10
        missing += [f"{_doc_name(doc)}: {path}" for path in sorted(paths) if not (REPO_ROOT / path).exists()]
    assert not missing, "the README or docs name missing files:\n" + "\n".join(missing)


def test_every_link_in_the_readme_and_docs_resolves():
    """Relative links ([text](path), [text](path#anchor), images) lead to a file, and an anchor to a heading there;
    the README links every docs page, and every docs page links back to the README."""
    readme, pages = DOCS[0], DOCS[1:]
    broken, linked_from = [], {}
    for doc in DOCS:
        linked_from[doc] = set()
        for target in LINK.findall(CODE_BLOCK.sub("", doc.read_text())):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...: not a file here
                continue
            path, _, anchor = target.partition("#")
            linked = (doc.parent / path).resolve() if path else doc
            linked_from[doc].add(linked)
            if not linked.exists():
                broken.append(f"{_doc_name(doc)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{_doc_name(doc)}: {target} (no heading with that anchor)")
    broken += [f"README.md: no link to {_doc_name(page)}" for page in pages if page not in linked_from[readme]]
    broken += [f"{_doc_name(page)}: no link back to the README" for page in pages if readme not in linked_from[page]]
    assert not broken, "broken links in the README or docs:\n" + "\n".join(broken)


@pytest.mark.parametrize("config", sorted((REPO_ROOT / "accelerate_configs").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_load_as_accelerate_writes_them(config):
    from accelerate.commands.config.config_args import load_config_from_file

    loaded = load_config_from_file(str(config))
    assert loaded.compute_environment.value == "LOCAL_MACHINE"
    assert "accelerate launch --config_file accelerate_configs/" + config.name in config.read_text()
    if loaded.distributed_type.value == "DEEPSPEED":
        assert (REPO_ROOT / loaded.deepspeed_config["deepspeed_config_file"]).exists()


@pytest.mark.parametrize("name", ["zero2.json", "zero2_offload.json", "zero3_offload.json"])
def test_deepspeed_configs_leave_trainer_values_to_auto(name):
    settings = json.loads((REPO_ROOT / "ds_configs" / name).read_text())
    for key in (
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "gradient_clipping",
    ):
        assert settings[key] == "auto"
    assert settings["bf16"]["enabled"] == "auto" and settings["zero_optimization"]["reduce_bucket_size"] == "auto"


# --- The parsed settings of every preset and recipe, against the record in tests/preset_settings.json --------
# The record was written before the defaults moved into the argument classes (registry.py), and a change to any
# default shows here as the settings it changes. After an intended change, rewrite the record with
#     python tests/test_config.py --write-preset-settings
PRESET_SETTINGS = REPO_ROOT / "tests" / "preset_settings.json"
MACHINE_DEPENDENT = {"use_cpu", "dataloader_num_workers", "dataloader_persistent_workers"}
NOT_SETTINGS = {"recipe", "preset"}  # what the run is, not how it is set (ScriptArguments' non-flag fields)


def parsed_settings(source: str) -> dict:
    """Every field of the dataclasses a preset (or a bare recipe, `recipes/<name>.py`) parses into, as JSON."""
    path = REPO_ROOT / source
    recipe, args = (path.stem, []) if source.endswith(".py") else (_recipe_of(path), ["--config", str(path)])
    extra = (TwoStageArguments,) if recipe == "two_stage" else ()
    settings = {}
    for parsed in parse_recipe_args(recipe, args, extra=extra):
        for settings_field in dataclasses.fields(parsed):
            name = settings_field.name
            if name not in MACHINE_DEPENDENT | NOT_SETTINGS and not name.startswith("_"):
                settings[name] = json.loads(json.dumps(getattr(parsed, name), default=_as_json))
    return settings


def _as_json(value):
    return value.value if isinstance(value, enum.Enum) else repr(value)


def _sources() -> list[str]:
    bare = [f"recipes/{name}.py" for name in ("full_ft", "lora", "qlora", "two_stage")]
    return bare + [str(path.relative_to(REPO_ROOT)) for path in PRESETS]


@pytest.mark.parametrize("source", _sources())
def test_parsed_settings_match_the_record(source):
    recorded = json.loads(PRESET_SETTINGS.read_text())
    assert source in recorded, f"{source} is not in {PRESET_SETTINGS.name}: rewrite the record (see above)"
    settings = parsed_settings(source)
    changed = {
        name: (recorded[source].get(name, "<absent>"), settings.get(name, "<absent>"))
        for name in recorded[source].keys() | settings.keys()
        if recorded[source].get(name, "<absent>") != settings.get(name, "<absent>")
    }
    assert not changed, f"{source}: (recorded, parsed now) {changed}"


if __name__ == "__main__" and sys.argv[1:] == ["--write-preset-settings"]:
    lines = [f"{json.dumps(source)}: {json.dumps(parsed_settings(source), sort_keys=True)}" for source in _sources()]
    PRESET_SETTINGS.write_text("{\n" + ",\n".join(lines) + "\n}\n")


def test_a_presets_description_is_read_from_its_yaml_and_is_no_flag():
    preset = REPO_ROOT / "recipes/configs/multi_gpu/fsdp4_bf16.yaml"
    script_args, _, _ = parse_recipe_args("full_ft", ["--config", str(preset)])
    described = yaml.safe_load(preset.read_text())
    assert script_args.recipe == "full_ft" and script_args.preset.recipe == "full_ft"
    assert script_args.preset.title == described["title"]
    assert script_args.preset.accelerate_config == described["accelerate_config"]
    with pytest.raises(RecipeError, match="unknown setting on the command line: --title"):
        parse_recipe_args("full_ft", ["--title", "x"])


def test_two_stage_copies_keep_what_the_run_is():
    from alt_text_recipes.train.stages import STAGE1_PARTS, stage1_arguments

    preset = str(REPO_ROOT / "recipes/configs/tiny/two_stage.yaml")
    script_args, training_args, model_args, options = parse_recipe_args(
        "two_stage", ["--config", preset], extra=(TwoStageArguments,)
    )
    stage1_script, _, _ = stage1_arguments(script_args, training_args, model_args, options, REPO_ROOT / "unused")
    assert stage1_script.train_modules == STAGE1_PARTS and stage1_script.show_examples == 0
    assert stage1_script.recipe == "two_stage" and stage1_script.preset == script_args.preset
