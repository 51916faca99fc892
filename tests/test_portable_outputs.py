"""What a recipe saves loads from any folder: the adapter records a base that resolves anywhere, and the model card's
code (loading, and the image-text-to-text pipeline) runs as written from another directory, for the adapter and for
the folder merge_adapter.py writes. The runs here start cold (this interpreter), as a user's do, so their output
also shows which library notices a run prints."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from transformers.pipelines import SUPPORTED_TASKS

from alt_text_recipes.data.logs import DEEPSPEED_CPU_NOTICE, KERNELS_NOTICE
from alt_text_recipes.outputs.model_card import PIPELINE_TAG, how_to_load

from conftest import CHAT_TWINS, DATASET, REPO_ROOT

PHOTO = sorted((DATASET / "test").glob("*.jpg"))[0]
NOTICES = (DEEPSPEED_CPU_NOTICE, KERNELS_NOTICE)

# Runs code blocks in turn (each its own namespace, as a reader pastes a card's blocks), then reports what the
# loading block made, what the pipeline wrote and whether the pipeline's model carries LoRA weights.
CARD_RUNNER = """
import json, sys
reports = {}
for block in json.loads(sys.argv[1]):
    namespace = {}
    exec(block, namespace)
    if "model" in namespace:
        reports["loaded"] = type(namespace["model"]).__name__
    if "result" in namespace:
        reports["alt_text"] = namespace["result"][0]["generated_text"]
        reports["pipeline_lora"] = any("lora_" in name for name, _ in namespace["alt_text"].model.named_parameters())
    reports.update(namespace.get("report", {}))
print(json.dumps(reports))
"""
# What a user who has only the adapter folder does: peft reads the base from adapter_config.json.
PEFT_LOADS = """
from peft import AutoPeftModel, PeftConfig, PeftModel
from transformers import AutoModelForImageTextToText
adapter = {adapter!r}
base = AutoModelForImageTextToText.from_pretrained(PeftConfig.from_pretrained(adapter).base_model_name_or_path)
report = {{"peft_model": type(PeftModel.from_pretrained(base, adapter)).__name__,
          "auto_peft_model": type(AutoPeftModel.from_pretrained(adapter)).__name__}}
"""


def _cold(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _elsewhere(tmp_path: Path) -> Path:
    """A working directory outside the repository, with the card's photo.jpg in it."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    shutil.copy(PHOTO, folder / "photo.jpg")
    return folder


def _code_blocks(card: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card.read_text(), flags=re.DOTALL)


def _run_elsewhere(blocks: list[str], cwd: Path) -> dict:
    result = _cold("-c", CARD_RUNNER, json.dumps(blocks), cwd=cwd)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """A LoRA adapter trained for one step on the tiny model named relatively (data/models/..., as the preset
    names it, from the repository root), then merged; the output of each command."""
    root = tmp_path_factory.mktemp("portable")
    adapter, merged = root / "lora", root / "lora-merged"
    train = _cold(
        "recipes/lora.py", "--config", "recipes/configs/tiny/lora.yaml", "--output_dir", str(adapter),
        "--max_steps", "1", "--max_train_samples", "16", "--per_device_train_batch_size", "4",
    )  # fmt: skip
    merge = _cold("recipes/merge_adapter.py", "--adapter_dir", str(adapter), "--output_dir", str(merged))
    return adapter, merged, {"train": train, "merge": merge}


@pytest.fixture(scope="module")
def adapter_elsewhere(outputs, tmp_path_factory):
    """From a folder outside the repository: peft's own loaders on the adapter, then the card's code as written."""
    adapter, _, _ = outputs
    blocks = [PEFT_LOADS.format(adapter=str(adapter)), *_code_blocks(adapter / "README.md")]
    return _run_elsewhere(blocks, _elsewhere(tmp_path_factory.mktemp("adapter")))


def test_the_adapter_records_a_base_that_loads_from_any_folder(outputs, adapter_elsewhere):
    adapter, _, _ = outputs
    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(base).is_absolute() and base == str(REPO_ROOT / "data/models/tiny-blip2-opt")
    assert adapter_elsewhere["peft_model"] == adapter_elsewhere["auto_peft_model"] == "PeftModel"


def test_the_adapter_card_code_and_pipeline_call_run_from_another_folder(outputs, adapter_elsewhere):
    adapter, _, _ = outputs
    assert f'model_path = "{adapter}"' in (adapter / "README.md").read_text()
    assert adapter_elsewhere["loaded"] == "PeftModel"
    # The pipeline put the adapter on the base its config names, and wrote alt text.
    assert adapter_elsewhere["alt_text"].strip() and adapter_elsewhere["pipeline_lora"]


def test_cards_name_a_pipeline_task_transformers_has(outputs):
    adapter, merged, _ = outputs
    assert PIPELINE_TAG in SUPPORTED_TASKS
    for folder in (adapter, merged):
        card = ModelCard.load(folder / "README.md")
        assert card.data.pipeline_tag == PIPELINE_TAG and "image-to-text" not in card.content
        assert f'pipeline("{PIPELINE_TAG}", model=model_path)' in card.content


def test_the_merged_folder_has_a_card_that_loads_from_another_folder(outputs, tmp_path):
    adapter, merged, _ = outputs
    card = merged / "README.md"
    text = card.read_text()
    assert "library_name: transformers" in text and "- merged" in text
    assert not any("peft" in block for block in _code_blocks(card))  # a standalone model
    assert "| learning rate | 0.003 |" in text  # the adapter card's account of training, carried over
    report = _run_elsewhere(_code_blocks(card), _elsewhere(tmp_path))
    assert report["loaded"] == "Blip2ForConditionalGeneration"
    assert report["alt_text"].strip() and not report["pipeline_lora"]


def test_a_chat_family_card_calls_the_pipeline_with_a_user_turn(tmp_path, monkeypatch):
    """Idefics and LLaVA take the image and the instruction as a chat turn: the card's pipeline call says so."""
    monkeypatch.chdir(_elsewhere(tmp_path))
    code = how_to_load(str(CHAT_TWINS["llava"]), None, chat=True, prompt='Describe the "dish".', max_new_tokens=4)
    blocks = re.findall(r"```python\n(.*?)```", code, flags=re.DOTALL)
    namespace: dict = {}
    exec(blocks[1], namespace)
    assert '"role": "user"' in blocks[1] and namespace["result"][0]["generated_text"].strip()


def test_training_and_merging_print_no_library_notices_on_a_cpu(outputs):
    _, _, runs = outputs
    for name, result in runs.items():
        output = result.stdout + result.stderr
        for notice in NOTICES:
            assert notice not in output, f"{name} printed: {notice}"
