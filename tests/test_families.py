"""The other model families (Idefics2, LLaVA) on their tiny twins: labels, image sensitivity, trainable
parts, LoRA targets, the two-stage recipe and evaluation (every recipe on every twin: test_recipes.py); every
family module complete, and the FSDP accelerate configs naming only their family's wrap classes."""

from __future__ import annotations

import functools
import importlib
import json
import pkgutil
import random
import re

import pytest
import torch
import yaml
from transformers import AutoModelForImageTextToText

import alt_text_recipes.train.families
from alt_text_recipes.data.errors import RecipeError
from alt_text_recipes.data.paths import SHIPPED_CONFIGS, shipped_config
from alt_text_recipes.memory.estimator import image_processor_settings, layer_stacks
from alt_text_recipes.outputs.generation import generate_alt_text
from alt_text_recipes.train.collators import IGNORE_INDEX, ChatCollator, make_collator
from alt_text_recipes.train.families import (
    FAMILIES,
    PARTS,
    family_of,
    freeze_all_but,
    parse_train_modules,
    trainable_by_part,
)
from alt_text_recipes.train.loop import run
from alt_text_recipes.train.modeling import load_config, load_trained, meta_model
from alt_text_recipes.train.random_weights import twin_of, with_layers
from alt_text_recipes.train.stages import run_two_stage

from conftest import ALL_TWINS, CHAT_TWINS, DATASET, REPO_ROOT, TINY_MODELS, logged_losses


@pytest.fixture(scope="module", params=sorted(CHAT_TWINS))
def chat_twin(request):
    model, processor = load_trained(CHAT_TWINS[request.param])
    return request.param, model, processor


def _examples(split, indices):
    return [{"image": split[i]["image"], "text": split[i]["text"]} for i in indices]


def _by_part(model, family):
    """{part: {parameter name: tensor}} of a plain (not peft) model."""
    parts = {part: {} for part in (*PARTS, "other")}
    for name, parameter in model.named_parameters():
        parts[family.part_of(name)][name] = parameter.detach().clone()
    return parts


def _same(left: dict, right: dict) -> bool:
    return left.keys() == right.keys() and all(torch.equal(left[name], right[name]) for name in left)


def test_every_twin_is_recognised_and_its_parts_cover_every_parameter():
    for name, folder in ALL_TWINS.items():
        model = AutoModelForImageTextToText.from_pretrained(folder)
        family = family_of(model)
        counts = trainable_by_part(model, family)
        assert set(counts) == set(PARTS), f"{name}: {counts}"  # nothing falls outside the three parts
        assert all(total > 0 for _, total in counts.values())
    # Idefics3 (no twin shipped) shares Idefics2's adapter: its module names must fall in the same parts.
    from transformers import Idefics3Config

    one_layer = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4)
    config = Idefics3Config(
        vision_config=dict(one_layer, image_size=64, patch_size=8),
        text_config=dict(one_layer, model_type="llama", vocab_size=300, num_key_value_heads=2),
    )
    with torch.device("meta"):
        idefics3 = AutoModelForImageTextToText.from_config(config)
    assert set(trainable_by_part(idefics3, family_of(idefics3))) == set(PARTS)
    with pytest.raises(RecipeError, match="no family adapter"):
        family_of(type("Config", (), {"model_type": "paligemma"})())


def test_chat_labels_cover_the_answer_only(chat_twin, food_splits):
    name, model, processor = chat_twin
    collator = make_collator(processor, model)
    assert isinstance(collator, ChatCollator)
    tokenizer = processor.tokenizer
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    examples = _examples(food_splits["train"], range(6))
    batch = collator(examples)
    prompt_ids = processor(images=[[examples[0]["image"]]], text=[collator.prompt])["input_ids"][0]
    expected_image_tokens = (
        prompt_ids.count(image_token_id)
        if isinstance(prompt_ids, list)
        else int((torch.as_tensor(prompt_ids) == image_token_id).sum())
    )
    assert expected_image_tokens >= 8  # the processor expanded the image into its feature positions
    stops = {tokenizer.eos_token_id, *collator.stop_token_ids()}
    for row, example in enumerate(examples):
        ids, labels, mask = batch["input_ids"][row], batch["labels"][row], batch["attention_mask"][row]
        assert int((ids == image_token_id).sum()) == expected_image_tokens
        assert (labels[ids == image_token_id] == IGNORE_INDEX).all()
        assert (labels[mask == 0] == IGNORE_INDEX).all()
        learnt_positions = (labels != IGNORE_INDEX).nonzero().flatten()
        # Everything before the answer (BOS, user turn, image, instruction, assistant opening) is masked...
        assert learnt_positions[0] == len(prompt_ids)
        assert torch.equal(ids[: len(prompt_ids)], torch.as_tensor(prompt_ids))
        # ...and the answer is exactly the caption followed by the end-of-turn token.
        learnt = labels[learnt_positions].tolist()
        assert learnt[-1] in stops
        assert tokenizer.decode(learnt[:-1], skip_special_tokens=True).strip() == example["text"]
    assert (batch["attention_mask"] == 0).any()  # captions differ in length: padding was checked


def test_chat_loss_and_generated_text_change_when_only_the_image_changes(chat_twin, food_splits):
    name, model, processor = chat_twin
    collator = make_collator(processor, model)
    examples = _examples(food_splits["train"], range(4))
    swapped = [{"image": examples[(i + 1) % 4]["image"], "text": examples[i]["text"]} for i in range(4)]
    batch, swapped_batch = collator(examples), collator(swapped)
    assert torch.equal(batch["input_ids"], swapped_batch["input_ids"])
    assert torch.equal(batch["labels"], swapped_batch["labels"])
    with torch.no_grad():
        loss, swapped_loss = model(**batch).loss.item(), model(**swapped_batch).loss.item()
    assert abs(loss - swapped_loss) > 1e-3, f"{name}: the loss ignores the image"

    from make_tiny_models import shape_example

    rng = random.Random(123)
    pictures = [shape_example(rng)["image"] for _ in range(6)]
    texts = generate_alt_text(model, processor, pictures, max_new_tokens=20)
    assert len(set(texts)) > 1, f"{name}: the same text for every image: {texts}"
    assert not any("Assistant" in text or "ASSISTANT" in text for text in texts)  # stopped at the end of turn


def test_default_lora_targets_stay_off_the_vision_tower():
    from trl import ModelConfig

    from alt_text_recipes.train.modeling import add_lora

    for name, folder in ALL_TWINS.items():
        model = AutoModelForImageTextToText.from_pretrained(folder)
        family = family_of(model)
        peft_model = add_lora(model, ModelConfig(use_peft=True, lora_r=4), gradient_checkpointing=False)
        adapted = {
            family.part_of(module_name.removeprefix("base_model.model."))
            for module_name, _ in peft_model.named_modules()
            if module_name.endswith(".lora_A")
        }
        assert "language" in adapted and "vision" not in adapted, f"{name}: adapters on {adapted}"
        # Beside a connector trained in full, no adapter sits inside it, and the connector is saved with them.
        model = AutoModelForImageTextToText.from_pretrained(folder)
        peft_model = add_lora(model, ModelConfig(use_peft=True, lora_r=4), False, full_parts=("connector",))
        adapted = {
            family.part_of(module_name.removeprefix("base_model.model."))
            for module_name, _ in peft_model.named_modules()
            if module_name.endswith(".lora_A")
        }
        assert adapted == {"language"}, f"{name}: adapters on {adapted}"
        assert any("modules_to_save" in n for n, _ in peft_model.named_parameters())


def test_one_lora_target_on_the_command_line_is_a_module_name():
    """trl's ModelConfig turns `--lora_target_modules q_proj` into the string 'q_proj', which peft would read as a
    regex for the whole module path and match nothing; a regex and 'all-linear' keep their meaning."""
    from alt_text_recipes.memory.estimator import training_plan
    from alt_text_recipes.train.arguments import parse_recipe_args
    from alt_text_recipes.train.modeling import add_lora

    def adapted(*targets: str) -> set[str]:
        flags = ["--config", "recipes/configs/tiny/lora.yaml", "--output_dir", "unused"]
        script_args, _, model_args = parse_recipe_args("lora", [*flags, "--lora_target_modules", *targets])
        model = AutoModelForImageTextToText.from_pretrained(TINY_MODELS["opt"])
        planned = training_plan(meta_model(model.config), script_args, model_args).adapters
        peft_model = add_lora(model, model_args, gradient_checkpointing=False)
        names = {
            name.removeprefix("base_model.model.").removesuffix(".lora_A")
            for name, _ in peft_model.named_modules()
            if name.endswith(".lora_A")
        }
        assert names == planned  # the estimator counts the adapters the recipe adds
        return {name.rsplit(".", 1)[-1] for name in names}

    assert adapted("q_proj") == {"q_proj"}
    assert adapted("q_proj", "v_proj") == {"q_proj", "v_proj"}
    assert adapted(r".*decoder\.layers\.0\.self_attn\.k_proj") == {"k_proj"}


def test_train_modules_parse_and_freeze_by_part():
    assert parse_train_modules(None, PARTS) == PARTS
    assert parse_train_modules(["language,connector"], ()) == ("connector", "language")
    with pytest.raises(RecipeError, match="not a part"):
        parse_train_modules(["vision", "projector"], ())
    # BLIP-2's connector is the Q-Former, its query tokens and the projection into the language model.
    model = AutoModelForImageTextToText.from_pretrained(TINY_MODELS["opt"])
    freeze_all_but(model, family_of(model), ("connector",))
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"qformer", "query_tokens", "language_projection"}
    counts = trainable_by_part(model, family_of(model))
    assert counts["vision"][0] == counts["language"][0] == 0 and counts["connector"][0] == counts["connector"][1]


def test_full_ft_trains_only_the_named_parts(tmp_path, capsys):
    output_dir = tmp_path / "out"
    full_ft = "full_ft"
    run(
        full_ft,
        [
            "--config",
            "recipes/configs/tiny/full_ft.yaml",
            "--model_name_or_path",
            str(CHAT_TWINS["idefics2"]),
            "--output_dir",
            str(output_dir),
            "--train_modules",
            "connector",
            "--max_steps",
            "6",
            "--logging_steps",
            "2",
        ],
    )
    printed = re.search(r"trainable parameters by part .*?\n((?:  .*\n){3})", capsys.readouterr().out).group(1)
    assert re.search(r"vision\s+0 of .* frozen", printed) and re.search(r"language\s+0 of .* frozen", printed)
    assert re.search(r"connector\s+([\d,]+) of\s+\1\s+trained in full", printed)
    family = FAMILIES["idefics2"]
    before = _by_part(AutoModelForImageTextToText.from_pretrained(CHAT_TWINS["idefics2"]), family)
    after = _by_part(AutoModelForImageTextToText.from_pretrained(output_dir), family)
    assert _same(before["vision"], after["vision"]) and _same(before["language"], after["language"])
    assert not _same(before["connector"], after["connector"])

    # A bad part is refused before training (on the command line: this one line and exit 1, as for every
    # RecipeError; tests/test_recipes.py launches such a refusal).
    with pytest.raises(RecipeError, match="not a part; choose from vision, connector, language"):
        run(
            full_ft,
            [
                "--config",
                "recipes/configs/tiny/full_ft.yaml",
                "--output_dir",
                str(tmp_path / "b"),
                "--train_modules",
                "projector",
            ],
        )


def test_two_stage_aligns_the_connector_then_adds_lora_from_stage_one(tmp_path, capsys):
    """In this process (the entry script itself is launched on two ranks in tests/test_distributed.py)."""
    output_dir = tmp_path / "two"
    common = ["--config", "recipes/configs/tiny/two_stage.yaml", "--output_dir", str(output_dir)]
    run_two_stage("two_stage", [*common, "--stage1_max_steps", "10", "--max_steps", "20"])
    stdout = capsys.readouterr().out
    assert "stage 1 of 2" in stdout and f"starting from {output_dir / 'stage1'}" in stdout
    family = FAMILIES["llava"]
    base = _by_part(AutoModelForImageTextToText.from_pretrained(CHAT_TWINS["llava"]), family)
    stage1 = _by_part(AutoModelForImageTextToText.from_pretrained(output_dir / "stage1"), family)
    # Stage 1: only the connector moved.
    assert _same(base["vision"], stage1["vision"]) and _same(base["language"], stage1["language"])
    assert not _same(base["connector"], stage1["connector"])
    # Stage 2 is an adapter on stage 1 that also carries the connector, trained further.
    adapter_config = json.loads((output_dir / "stage2" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(output_dir / "stage1")
    assert adapter_config["modules_to_save"] == ["model.multi_modal_projector"]
    assert (output_dir / "stage2" / "processor_config.json").exists()
    model, _ = load_trained(output_dir / "stage2")
    merged = _by_part(model.merge_and_unload(), family)
    assert _same(stage1["vision"], merged["vision"])
    assert not _same(stage1["connector"], merged["connector"])
    assert not _same(stage1["language"], merged["language"])  # the LoRA update, merged in
    for stage in ("stage1", "stage2"):
        losses = logged_losses(output_dir / stage)
        assert losses[-1] < losses[0], f"{stage}: {losses}"

    run_two_stage("two_stage", [*common, "--max_steps", "2"])
    stdout = capsys.readouterr().out
    assert "holds a finished stage 1 model" in stdout and "stage 1 of 2" not in stdout


def test_evaluation_scores_every_family(tmp_path):
    """In this process (tests/test_evaluation.py launches evaluate_captions.py itself)."""
    from evaluate_captions import EvaluationArguments, evaluate

    output_file = tmp_path / "scores.json"
    evaluate(
        EvaluationArguments(
            dataset_name=str(DATASET),
            models=[f"{name}={folder}" for name, folder in ALL_TWINS.items()],
            split="test",
            max_samples=8,
            embedding_model="none",
            examples=0,
            output_file=str(output_file),
        )
    )
    report = json.loads(output_file.read_text())
    scored = report["models"]
    assert set(scored) == set(ALL_TWINS)
    for name, entry in scored.items():
        captions = entry["captions"]
        assert len(captions) == 8 and all(captions), name
        assert 0 <= entry["scores"]["cider"] and 0 <= entry["scores"]["bleu4"] <= 1


def test_fsdp_wrap_classes_cover_each_family_s_layers():
    for name, folder in ALL_TWINS.items():
        model = AutoModelForImageTextToText.from_pretrained(folder)
        family = family_of(model)
        present = {type(module).__name__ for module in model.modules()}
        wrapped = present & set(family.fsdp_wrap)
        decoder_layers = {cls for cls in present if cls.endswith(("DecoderLayer", "Block"))}
        assert decoder_layers and decoder_layers <= wrapped, f"{name}: {decoder_layers - wrapped} not wrapped"
    settings = yaml.safe_load((REPO_ROOT / "accelerate_configs/fsdp4_idefics2.yaml").read_text())
    listed = set(settings["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"].split(","))
    idefics2 = {
        type(m).__name__ for m in AutoModelForImageTextToText.from_pretrained(CHAT_TWINS["idefics2"]).modules()
    }
    assert listed <= idefics2 and "MistralDecoderLayer" in listed


# --- Every family module is complete --------------------------------------------------------------------------

FAMILY_MODULES = sorted(info.name for info in pkgutil.iter_modules(alt_text_recipes.train.families.__path__))


@functools.cache
def _held_classes(family_name: str) -> frozenset[str]:
    """The module classes of a family's twins and of its shipped configs (built on the meta device, one layer
    per stack: the classes, not the size)."""
    family = FAMILIES[family_name]
    models = [load_trained(REPO_ROOT / twin.folder)[0] for twin in family.twins]
    models += [meta_model(with_layers(load_config(name, shipped_first=True), 1)) for name in family.shipped_configs]
    return frozenset(type(module).__name__ for model in models for module in model.modules())


def test_every_accelerate_fsdp_config_names_only_its_family_s_wrap_classes():
    owners = {path: family for family in FAMILIES.values() for path in family.accelerate_configs}
    fsdp_configs = []
    for path in sorted((REPO_ROOT / "accelerate_configs").glob("*.yaml")):
        settings = yaml.safe_load(path.read_text())
        if settings.get("distributed_type") != "FSDP":
            continue
        relative = str(path.relative_to(REPO_ROOT))
        fsdp_configs.append(relative)
        assert relative in owners, f"{relative}: no family module lists it in accelerate_configs"
        listed = set(settings["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"].split(","))
        undeclared = listed - set(owners[relative].fsdp_wrap)
        assert not undeclared, f"{relative} wraps {undeclared}, which {owners[relative].name} does not declare"
    assert sorted(owners) == fsdp_configs  # and every config a family claims is an FSDP config that exists


def test_every_shipped_config_belongs_to_a_family():
    declared = {shipped_config(name) for family in FAMILIES.values() for name in family.shipped_configs}
    assert None not in declared, "a family declares a shipped config that data/model_configs/ lacks"
    assert declared == {folder for folder in SHIPPED_CONFIGS.iterdir() if (folder / "config.json").is_file()}


@pytest.mark.parametrize("module_name", FAMILY_MODULES)
def test_family_module_is_complete(module_name):
    """What a new family module must declare works end to end: its twins load and are recognised, its shipped
    configs are recognised and estimated, its FSDP wrap classes are real layer classes, a recipe trains it."""
    family = importlib.import_module(f"alt_text_recipes.train.families.{module_name}").FAMILY
    assert FAMILIES[family.name] is family
    assert family.twins and family.shipped_configs, f"{family.name}: a family needs a tiny twin and a real config"

    for twin in family.twins:
        model, _ = load_trained(REPO_ROOT / twin.folder)
        assert family_of(model) is family, twin.name
        assert twin_of(model.config) == twin.folder  # the twin stands in for real models of its own kind
    for name in family.shipped_configs:
        config = load_config(name, shipped_first=True)
        assert family_of(config) is family, name
        assert config.model_type in family.layer_stacks, f"{name}: the estimator has no layer arithmetic for it"
        stacks, loss_seq = layer_stacks(config, 20, 1, image_processor_settings(name))
        assert stacks and loss_seq > 0 and {stack.part for stack in stacks} <= set(PARTS)
    # Each wrap class is a layer class of the family's twins or real models; one that none of them holds (LLaVA's
    # Mistral variant) must at least be a layer class another family's model holds: a misspelt or renamed class
    # would leave FSDP silently wrapping nothing.
    missing = set(family.fsdp_wrap) - _held_classes(family.name)
    elsewhere = frozenset().union(*(_held_classes(name) for name in FAMILIES))
    assert missing <= elsewhere, f"{family.name}: {missing - elsewhere} are no layer classes of any model here"

    # ...and a recipe trains it: tests/test_recipes.py trains every recipe on every twin of every family module
    # (conftest.ALL_TWINS is read from the family modules), and would fail for this one.
