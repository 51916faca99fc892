"""Caption metrics, evaluation with real generation during training, the model card and the Hub push,
evaluate_captions.py, alt_text.py with its accessible page (checked in headless Chromium), adapter merge."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
import transformers.utils.hub
from transformers import AutoModelForImageTextToText

from conftest import DATASET, TINY_MODELS, run_recipe
from hub_standin import LocalHub
from core.alt_text import shorten
from core.errors import RecipeError
from core.generation import generate_alt_text
from core.metrics import caption_scores
from core.modeling import load_trained
from core.train import recipe_defaults, run

EVAL_ARGS = ["--eval_strategy", "steps", "--eval_steps", "15", "--save_strategy", "steps", "--save_steps", "15",
             "--max_eval_samples", "24", "--generation_max_new_tokens", "20"]


def test_caption_metrics_follow_the_coco_definitions():
    references = ["A red bowl of soup on a wooden table.", "a plate of pasta", ["two green apples", "a pair of apples"]]
    exact = caption_scores(["a red bowl of soup on a wooden table", "A plate of pasta.", "two green apples"], references)
    # The PTB tokenizer lower-cases and drops punctuation, so these match their references exactly.
    assert exact["bleu4"] == pytest.approx(1.0, abs=1e-6) and exact["rouge_l"] == pytest.approx(1.0)
    partial = caption_scores(["a blue bowl of rice", "a plate of pasta", "three red apples"], references)
    wrong = caption_scores(["", "the sky at night", "a car"], references)
    for metric in ("bleu4", "cider", "rouge_l"):
        assert exact[metric] > partial[metric] > wrong[metric] >= 0
    assert 0 <= exact["embedding_distance"] < partial["embedding_distance"] < wrong["embedding_distance"] <= 2


def test_shortened_alt_text_keeps_whole_words_and_no_dangling_word():
    text = "a blue bowl of tomato soup topped with three basil leaves on a red checkered cloth beside a glass"
    for limit in range(20, len(text)):
        short = shorten(text, limit)
        assert len(short) <= limit
        assert text.lower().startswith(short.lower()) and text[len(short)] == " "  # ends where a word ends
        assert short.split()[-1] not in {"a", "of", "with", "on", "topped"}
    assert shorten("  a  bowl ", 125) == "A bowl"
    assert shorten("x" * 200, 125) == "X" + "x" * 124  # one word longer than the limit: the only inside cut


@pytest.fixture(scope="module")
def trained_lora(tmp_path_factory):
    """A LoRA run that evaluates with generation every 15 steps and keeps the best checkpoint by CIDEr."""
    output_dir = tmp_path_factory.mktemp("lora")
    result = run_recipe("lora", "--config", "recipes/configs/tiny/lora.yaml", "--output_dir", str(output_dir),
                        "--max_steps", "45", *EVAL_ARGS, "--metric_for_best_model", "cider",
                        "--load_best_model_at_end", "--save_total_limit", "5")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output_dir, result


def test_training_logs_generated_caption_metrics_and_keeps_the_best(trained_lora):
    output_dir, result = trained_lora
    state = json.loads((output_dir / "trainer_state.json").read_text())
    evaluations = [entry for entry in state["log_history"] if "eval_cider" in entry]
    assert [entry["step"] for entry in evaluations] == [15, 30, 45]
    for entry in evaluations:
        assert {"eval_loss", "eval_bleu4", "eval_rouge_l", "eval_embedding_distance"} <= set(entry)
    assert "[eval] generated: " in result.stdout
    best = max(evaluations, key=lambda entry: entry["eval_cider"])
    assert state["best_metric"] == pytest.approx(best["eval_cider"])
    assert state["best_model_checkpoint"].endswith(f"checkpoint-{best['step']}")
    # The saved adapter is the best checkpoint's.
    from safetensors.torch import load_file
    saved = load_file(output_dir / "adapter_model.safetensors")
    kept = load_file(Path(state["best_model_checkpoint"]) / "adapter_model.safetensors")
    assert saved.keys() == kept.keys() and all(torch.equal(saved[k], kept[k]) for k in saved)
    card = (output_dir / "README.md").read_text()
    assert "library_name: peft" in card and "| cider |" in card and "Peak memory while training" in card
    assert f"best checkpoint by cider ({state['best_metric']:.4g}), step {best['step']}" in card


def test_push_to_hub_uploads_adapter_processor_and_model_card(tmp_path, monkeypatch):
    """A QLoRA run with evaluation, pushed with --push_to_hub through the Trainer to a local stand-in."""
    hub = LocalHub(tmp_path / "hub")
    monkeypatch.setattr(transformers.utils.hub, "_hf_api", hub)
    run(recipe_defaults("qlora"), ["--config", "recipes/configs/tiny/qlora.yaml", "--output_dir", str(tmp_path / "out"),
                                   "--max_steps", "15", *EVAL_ARGS, "--push_to_hub", "--hub_model_id",
                                   "gourmetgram/alt-text-qlora"])
    pushed = tmp_path / "hub/gourmetgram/alt-text-qlora"
    names = {p.name for p in pushed.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "processor_config.json", "README.md"} <= names
    assert not any(name.startswith("checkpoint-") for name in names)
    card = (pushed / "README.md").read_text()
    for expected in ("QLoRA", "data/models/tiny-blip2-opt", "data/gourmetgram-mini", "| learning rate | 0.003 |",
                     "| quantization | 4-bit nf4 |", "| cider |", "Peak memory while training", "PeftModel.from_pretrained",
                     '"gourmetgram/alt-text-qlora"'):
        assert expected in card, expected
    model, processor = load_trained(pushed)  # what was uploaded reloads on its own
    assert generate_alt_text(model, processor, [_test_images(1)[0]], max_new_tokens=8)[0]


def _test_images(count):
    from core.data import load_caption_dataset

    return list(load_caption_dataset(str(DATASET))["test"].select(range(count))["image"])


def test_evaluate_captions_scores_models_side_by_side(trained_lora, tmp_path):
    output_dir, _ = trained_lora
    report_file = tmp_path / "scores.json"
    result = run_recipe("evaluate_captions", "--models", f"base={TINY_MODELS['opt']}", f"tuned={output_dir}",
                        "--max_samples", "16", "--generation_max_new_tokens", "20", "--examples", "2",
                        "--output_file", str(report_file))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "| model | bleu4 | cider | rouge_l | embedding_distance |" in result.stdout
    assert "[1] reference: " in result.stdout and "    tuned: " in result.stdout
    report = json.loads(report_file.read_text())
    assert report["images"] == 16 and list(report["models"]) == ["base", "tuned"]
    base, tuned = report["models"]["base"], report["models"]["tuned"]
    assert len(tuned["captions"]) == 16 and tuned["captions"] != base["captions"]
    assert set(tuned["scores"]) == {"bleu4", "cider", "rouge_l", "embedding_distance"}


def _browser_report(page: Path) -> dict:
    """Open `page` in headless Chromium; a script reports each image's alt text and whether it loaded."""
    check = page.with_name("browser-check.html")
    script = """<script>
window.addEventListener("load", () => {
  const report = {lang: document.documentElement.lang, h1: document.querySelectorAll("h1").length,
    h2: document.querySelectorAll("h2").length, title: document.title,
    images: [...document.images].map(i => ({alt: i.getAttribute("alt"), loaded: i.complete && i.naturalWidth > 0}))};
  const out = document.createElement("pre"); out.id = "report"; out.textContent = JSON.stringify(report);
  document.body.appendChild(out);
});
</script>"""
    check.write_text(page.read_text().replace("</body>", script + "</body>"))
    chromium = shutil.which("chromium")
    assert chromium, "Debian chromium is missing: `make test` installs it (make browser)"
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", check.as_uri()],
            capture_output=True, text=True, timeout=60).stdout
    start = dom.index('<pre id="report">') + len('<pre id="report">')
    return json.loads(dom[start:dom.index("</pre>", start)].replace("&quot;", '"').replace("&amp;", "&"))


def test_alt_text_writes_jsonl_csv_and_a_page_every_browser_image_has_alt(trained_lora, tmp_path):
    output_dir, _ = trained_lora
    photos = tmp_path / "photos"
    (photos / "nested").mkdir(parents=True)
    test_folder = DATASET / "test"
    for name in ("test_0000.jpg", "test_0001.jpg", "test_0002.jpg"):
        shutil.copy(test_folder / name, photos / name)
    shutil.copy(test_folder / "test_0003.jpg", photos / "nested" / "plate & bowl.jpg")
    (photos / "notes.jpg").write_text("not an image")
    out = tmp_path / "alt"
    result = run_recipe("alt_text", "--model", str(output_dir), "--images", str(photos),
                        str(test_folder / "test_001*.jpg"), "--output_dir", str(out), "--max_chars", "40",
                        "--batch_size", "4")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "alt_text.jsonl").read_text().splitlines()]
    assert len(records) == 4 + 10  # the unreadable file is skipped, the glob adds test_0010..0019
    assert all(0 < len(r["alt_text"]) <= 40 and r["max_chars"] == 40 and r["num_beams"] == 1 for r in records)
    assert [json.loads(line)["path"] for line in (out / "skipped.jsonl").read_text().splitlines()] \
        == [str(photos / "notes.jpg")]
    assert "skipped 1 file(s)" in result.stdout
    with (out / "alt_text.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [row["alt_text"] for row in rows] == [r["alt_text"] for r in records]

    report = _browser_report(out / "index.html")
    assert report["lang"] == "en" and report["h1"] == 1 and report["h2"] == len(records) and report["title"]
    assert len(report["images"]) == len(records)
    assert all(image["alt"] and image["alt"].strip() and image["loaded"] for image in report["images"]), report
    assert sorted(image["alt"] for image in report["images"]) == sorted(r["alt_text"] for r in records)


def test_merged_adapter_reloads_and_writes_the_same_alt_text(trained_lora, tmp_path):
    output_dir, _ = trained_lora
    merged_dir = tmp_path / "merged"
    result = run_recipe("merge_adapter", "--adapter_dir", str(output_dir), "--output_dir", str(merged_dir))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (merged_dir / "model.safetensors").exists() and not (merged_dir / "adapter_config.json").exists()
    merged, processor = load_trained(merged_dir)
    assert isinstance(merged, AutoModelForImageTextToText._model_mapping[type(merged.config)])
    adapter, _ = load_trained(output_dir)
    images = _test_images(8)
    assert generate_alt_text(merged, processor, images, max_new_tokens=20) \
        == generate_alt_text(adapter, processor, images, max_new_tokens=20)


def test_merge_refuses_a_folder_without_an_adapter(tmp_path):
    from merge_adapter import MergeArguments, merge_adapter

    with pytest.raises(RecipeError, match="not a LoRA/QLoRA output folder"):
        merge_adapter(MergeArguments(adapter_dir=str(TINY_MODELS["opt"]), output_dir=str(tmp_path)))
