"""Caption metrics, evaluation with real generation during training, the model card and the Hub push,
evaluate_captions.py, alt_text.py with its accessible page (checked in headless Chromium), adapter merge."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import evaluate
import pytest
import torch
import transformers.utils.hub
from datasets import Dataset, Image
from PIL import Image as PILImage
from transformers import AutoModelForImageTextToText

from alt_text_recipes.data.errors import RecipeError
from alt_text_recipes.data.sources import DatasetError
from alt_text_recipes.outputs.alt_text_files import shorten
from alt_text_recipes.outputs.evaluation import images_with_references
from alt_text_recipes.outputs.generation import generate_alt_text
from alt_text_recipes.outputs.guidelines import GUIDELINE_METRICS
from alt_text_recipes.outputs.metrics import METRICS_FOLDER, caption_scores
from alt_text_recipes.train.loop import run
from alt_text_recipes.train.modeling import load_trained

from conftest import DATASET, TINY_MODELS, run_recipe
from hub_standin import LocalHub

EVAL_ARGS = [
    "--eval_strategy",
    "steps",
    "--eval_steps",
    "15",
    "--save_strategy",
    "steps",
    "--save_steps",
    "15",
    "--max_eval_samples",
    "24",
    "--generation_max_new_tokens",
    "20",
]


def test_caption_metrics_follow_the_coco_definitions():
    references = [
        "A red bowl of soup on a wooden table.",
        "a plate of pasta",
        ["two green apples", "a pair of apples"],
    ]
    exact = caption_scores(
        ["a red bowl of soup on a wooden table", "A plate of pasta.", "two green apples"], references
    )
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
    result = run_recipe(
        "lora",
        "--config",
        "recipes/configs/tiny/lora.yaml",
        "--output_dir",
        str(output_dir),
        "--max_steps",
        "45",
        *EVAL_ARGS,
        "--metric_for_best_model",
        "cider",
        "--load_best_model_at_end",
        "--save_total_limit",
        "5",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output_dir, result


def test_training_logs_generated_caption_metrics_and_keeps_the_best(trained_lora):
    output_dir, result = trained_lora
    state = json.loads((output_dir / "trainer_state.json").read_text())
    evaluations = [entry for entry in state["log_history"] if "eval_cider" in entry]
    assert [entry["step"] for entry in evaluations] == [15, 30, 45]
    for entry in evaluations:
        assert {"eval_loss", "eval_bleu4", "eval_rouge_l", "eval_embedding_distance"} <= set(entry)
        assert {f"eval_{name}" for name in GUIDELINE_METRICS} <= set(entry)  # beside CIDEr, at every evaluation
        assert 0 <= entry["eval_guideline_within_limit"] <= 1 and entry["eval_guideline_mean_chars"] > 0
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
    run(
        "qlora",
        [
            "--config",
            "recipes/configs/tiny/qlora.yaml",
            "--output_dir",
            str(tmp_path / "out"),
            "--max_steps",
            "15",
            *EVAL_ARGS,
            "--push_to_hub",
            "--hub_model_id",
            "gourmetgram/alt-text-qlora",
        ],
    )
    pushed = tmp_path / "hub/gourmetgram/alt-text-qlora"
    names = {p.name for p in pushed.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "processor_config.json", "README.md"} <= names
    assert not any(name.startswith("checkpoint-") for name in names)
    card = (pushed / "README.md").read_text()
    for expected in (
        "QLoRA",
        "data/models/tiny-blip2-opt",
        "data/gourmetgram-mini",
        "| learning rate | 0.003 |",
        "| quantization | 4-bit nf4 |",
        "| cider |",
        "Peak memory while training",
        "PeftModel.from_pretrained",
        '"gourmetgram/alt-text-qlora"',
    ):
        assert expected in card, expected
    model, processor = load_trained(pushed)  # what was uploaded reloads on its own
    assert generate_alt_text(model, processor, [_test_images(1)[0]], max_new_tokens=8)[0]


def _test_images(count):
    from alt_text_recipes.data.sources import load_caption_dataset

    return list(load_caption_dataset(str(DATASET))["test"].select(range(count))["image"])


def test_evaluate_captions_scores_models_side_by_side(trained_lora, tmp_path):
    output_dir, _ = trained_lora
    report_file = tmp_path / "scores.json"
    result = run_recipe(
        "evaluate_captions",
        "--models",
        f"base={TINY_MODELS['opt']}",
        f"tuned={output_dir}",
        "--max_samples",
        "16",
        "--generation_max_new_tokens",
        "20",
        "--examples",
        "2",
        "--output_file",
        str(report_file),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "| model | bleu4 | cider | rouge_l | embedding_distance | guideline_within_limit |" in result.stdout
    assert "[1] reference: " in result.stdout and "    tuned: " in result.stdout
    report = json.loads(report_file.read_text())
    assert report["images"] == 16 and list(report["models"]) == ["base", "tuned"]
    base, tuned = report["models"]["base"], report["models"]["tuned"]
    assert len(tuned["captions"]) == 16 and tuned["captions"] != base["captions"]
    assert set(tuned["scores"]) == {"bleu4", "cider", "rouge_l", "embedding_distance", *GUIDELINE_METRICS}


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
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=5000",
                "--dump-dom",
                check.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    start = dom.index('<pre id="report">') + len('<pre id="report">')
    return json.loads(dom[start : dom.index("</pre>", start)].replace("&quot;", '"').replace("&amp;", "&"))


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
    result = run_recipe(
        "alt_text",
        "--model",
        str(output_dir),
        "--images",
        str(photos),
        str(test_folder / "test_001*.jpg"),
        "--output_dir",
        str(out),
        "--max_chars",
        "40",
        "--batch_size",
        "4",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "alt_text.jsonl").read_text().splitlines()]
    assert len(records) == 4 + 10  # the unreadable file is skipped, the glob adds test_0010..0019
    assert all(0 < len(r["alt_text"]) <= 40 and r["max_chars"] == 40 and r["num_beams"] == 1 for r in records)
    assert [json.loads(line)["path"] for line in (out / "skipped.jsonl").read_text().splitlines()] == [
        str(photos / "notes.jpg")
    ]
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
    assert generate_alt_text(merged, processor, images, max_new_tokens=20) == generate_alt_text(
        adapter, processor, images, max_new_tokens=20
    )


def test_merge_refuses_a_folder_without_an_adapter(tmp_path):
    from merge_adapter import MergeArguments, merge_adapter

    with pytest.raises(RecipeError, match="not a LoRA/QLoRA output folder"):
        merge_adapter(MergeArguments(adapter_dir=str(TINY_MODELS["opt"]), output_dir=str(tmp_path)))


def _photo(folder: Path, name: str, colour: tuple[int, int, int]) -> str:
    path = folder / name
    PILImage.new("RGB", (32, 32), colour).save(path)
    return str(path)


def _caption_rows(images: list, texts: list) -> Dataset:
    return Dataset.from_dict({"image": images, "text": texts}).cast_column("image", Image())


def test_rows_of_one_image_are_grouped_with_all_their_references(tmp_path):
    red, green = _photo(tmp_path, "red.png", (255, 0, 0)), _photo(tmp_path, "green.png", (0, 255, 0))
    images, references = images_with_references(
        _caption_rows([red, green, red, green, red], ["r1", "g1", "r2", "g2", "r3"])
    )
    assert references == [["r1", "r2", "r3"], ["g1", "g2"]]  # in order of first appearance
    assert [Path(image["path"]).name for image in images.cast_column("image", Image(decode=False))["image"]] == [
        "red.png",
        "green.png",
    ]
    # Embedded images without a path: the same bytes are the same image.
    red_bytes, green_bytes = Path(red).read_bytes(), Path(green).read_bytes()
    embedded = [{"bytes": data, "path": None} for data in (green_bytes, red_bytes, green_bytes, bytes(red_bytes))]
    assert images_with_references(_caption_rows(embedded, ["g1", "r1", "g2", "r2"]))[1] == [["g1", "g2"], ["r1", "r2"]]
    # A caption column that already holds each image's references, one row per image.
    assert images_with_references(_caption_rows([red, green], [["r1", "r2"], ["g1"]]))[1] == [["r1", "r2"], ["g1"]]
    # Rows without an image are never merged (the data check reports each; here they stay apart).
    assert images_with_references(_caption_rows([red, None, None], ["r1", "x", "y"]))[1] == [["r1"], ["x"], ["y"]]


# Three images with two to five references each; the alt text "generated" for each (by colour).
MULTI_REFERENCE = {
    (200, 30, 30): (
        "a red plate of pasta on a wooden table",
        [
            "a red plate of pasta on a wooden table",
            "pasta on a red plate",
            "a plate of pasta",
            "red plate with spaghetti on wood",
            "a wooden table with a plate of pasta",
        ],
    ),
    (30, 200, 30): ("a bowl of green salad", ["a green salad in a white bowl", "a bowl of salad with lettuce"]),
    (30, 30, 200): (
        "a blue cup of coffee on a saucer",
        ["a cup of coffee on a blue saucer", "coffee in a blue cup", "a blue mug of black coffee"],
    ),
}


@pytest.fixture
def counted_generation(monkeypatch):
    """Generation replaced by MULTI_REFERENCE's caption for each image's colour; records every image asked for."""
    import alt_text_recipes.outputs.generation

    asked = []

    def generate(model, processor, images, **settings):
        colours = [image.convert("RGB").getpixel((0, 0)) for image in images]
        asked.extend(colours)
        return [MULTI_REFERENCE[colour][0] for colour in colours]

    monkeypatch.setattr(alt_text_recipes.outputs.generation, "generate_alt_text", generate)
    return asked


def _scored_by_evaluate_captions(rows: Dataset, tmp_path: Path, max_chars: int = 125) -> dict[str, float]:
    from alt_text_recipes.outputs.evaluation import GenerationSettings, evaluate_captions

    settings = GenerationSettings()
    return evaluate_captions(
        None, None, rows, settings, batch_size=2, embedding_model=None, max_chars=max_chars
    ).scores


def _scored_by_the_trainer(rows: Dataset, tmp_path: Path, max_chars: int = 125) -> dict[str, float]:
    from transformers import TrainingArguments

    from alt_text_recipes.outputs.evaluation import GenerationSettings
    from alt_text_recipes.outputs.model_card import RunSummary
    from alt_text_recipes.train.trainer import AltTextTrainer

    model, processor = load_trained(TINY_MODELS["opt"])
    trainer = AltTextTrainer(
        model=model,
        args=TrainingArguments(str(tmp_path), use_cpu=True, report_to="none", per_device_eval_batch_size=2),
        processing_class=processor,
        generation=GenerationSettings(),
        embedding_model=None,
        caption_metrics=True,
        run_summary=RunSummary("tiny", "rows", None, False),
        alt_text_max_chars=max_chars,
    )
    return trainer.generated_caption_scores(rows)


@pytest.mark.parametrize("score", [_scored_by_evaluate_captions, _scored_by_the_trainer])
def test_each_image_is_captioned_once_and_scored_against_all_its_references(score, counted_generation, tmp_path):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    paths = {colour: _photo(tmp_path, f"{index}.png", colour) for index, colour in enumerate(MULTI_REFERENCE)}
    # One row per (image, reference), the images interleaved as a shuffled COCO split has them.
    pairs = [(colour, reference) for colour, (_, references) in MULTI_REFERENCE.items() for reference in references]
    pairs = pairs[::2] + pairs[1::2]
    scores = score(_caption_rows([paths[colour] for colour, _ in pairs], [text for _, text in pairs]), tmp_path)

    assert sorted(counted_generation) == sorted(MULTI_REFERENCE)  # once per image, not once per row
    tokenizer = PTBTokenizer()
    ground_truth = tokenizer.tokenize(
        {
            index: [{"caption": text} for text in references]
            for index, (_, references) in enumerate(MULTI_REFERENCE.values())
        }
    )
    generated = tokenizer.tokenize(
        {index: [{"caption": caption}] for index, (caption, _) in enumerate(MULTI_REFERENCE.values())}
    )
    bleu, _ = Bleu(4).compute_score(ground_truth, generated, verbose=0)
    cider, _ = Cider().compute_score(ground_truth, generated)
    assert scores["bleu4"] == pytest.approx(bleu[3]) and scores["cider"] == pytest.approx(cider)
    # The guideline metrics beside them, with the length limit given (the captions are 38, 21 and 32 characters).
    lengths = [len(caption) for caption, _ in MULTI_REFERENCE.values()]
    assert scores["guideline_within_limit"] == 1 and scores["guideline_mean_chars"] == pytest.approx(sum(lengths) / 3)
    short = score(_caption_rows([paths[colour] for colour, _ in pairs], [text for _, text in pairs]), tmp_path, 25)
    assert short["guideline_within_limit"] == pytest.approx(1 / 3) and short["cider"] == pytest.approx(cider)
    # Scored row by row (one reference each, images repeated) the numbers are others.
    per_row = caption_scores([MULTI_REFERENCE[colour][0] for colour, _ in pairs], [text for _, text in pairs], None)
    assert per_row["cider"] != pytest.approx(cider) and per_row["bleu4"] != pytest.approx(bleu[3])


def _multi_reference_captions() -> tuple[list[str], list[list[str]]]:
    return [caption for caption, _ in MULTI_REFERENCE.values()], [refs for _, refs in MULTI_REFERENCE.values()]


def test_the_evaluate_modules_equal_pycocoevalcap_on_multi_reference_captions():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # Two more images, each with a caption that shares little with its references.
    captions, references = _multi_reference_captions()
    captions += ["a plate of fries", "soup"]
    references += [["a bowl of fries with ketchup", "french fries on a plate"], ["a bowl of tomato soup", "hot soup"]]
    tokenizer = PTBTokenizer()
    ground_truth = tokenizer.tokenize({i: [{"caption": r} for r in refs] for i, refs in enumerate(references)})
    generated = tokenizer.tokenize({i: [{"caption": caption}] for i, caption in enumerate(captions)})
    expected = {
        "bleu4": Bleu(4).compute_score(ground_truth, generated, verbose=0)[0][3],
        "cider": Cider().compute_score(ground_truth, generated)[0],
        "rouge_l": Rouge().compute_score(ground_truth, generated)[0],
    }
    for name, value in expected.items():
        module = evaluate.load(str(METRICS_FOLDER / name), keep_in_memory=True)
        assert module.compute(predictions=captions, references=references) == {name: pytest.approx(value, abs=1e-12)}
    assert 0 < expected["bleu4"] < 1 and 0 < expected["cider"] and 0 < expected["rouge_l"] < 1
    # One reference per image may be given as a string.
    single = evaluate.load(str(METRICS_FOLDER / "cider"), keep_in_memory=True)
    as_strings = single.compute(predictions=captions, references=[refs[0] for refs in references])
    assert as_strings == single.compute(predictions=captions, references=[refs[:1] for refs in references])


def test_every_metric_module_loads_offline_from_another_directory(tmp_path, monkeypatch):
    """From a folder outside the repository, with every network connection refused: the modules load by the
    absolute path `load_metric` gives (a relative `metrics/cider` would send evaluate to the Hub)."""
    import socket

    from alt_text_recipes.outputs import metrics

    def refuse(*args, **kwargs):
        raise AssertionError("a metric tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.chdir(tmp_path)
    metrics.load_metric.cache_clear()
    names = sorted(path.name for path in METRICS_FOLDER.iterdir() if (path / f"{path.name}.py").is_file())
    assert names == ["alt_text_guidelines", "bleu4", "cider", "embedding_similarity", "rouge_l"]
    captions, references = _multi_reference_captions()
    for name in names:
        module = metrics.load_metric(name)
        assert isinstance(module, evaluate.Metric) and module.name == name
        inputs = (
            {"predictions": captions}
            if name == "alt_text_guidelines"
            else {"predictions": captions, "references": references}
        )
        assert module.compute(**inputs)
    scores = caption_scores(captions, references, max_chars=30)
    assert set(scores) == {"bleu4", "cider", "rouge_l", "embedding_distance", *GUIDELINE_METRICS}
    similarity = metrics.load_metric("embedding_similarity").compute(predictions=captions, references=references)
    assert scores["embedding_distance"] == pytest.approx(similarity["embedding_distance"])
    assert similarity["embedding_similarity"] == pytest.approx(1 - scores["embedding_distance"])
    assert scores["guideline_within_limit"] == pytest.approx(1 / 3)  # 38, 21 and 32 characters


@pytest.fixture
def split_with_bad_rows(tmp_path) -> Path:
    """A `test` split: two usable photos, a truncated JPEG and a photo with an empty caption."""
    folder = tmp_path / "messy" / "test"
    folder.mkdir(parents=True)
    for name in ("test_0000.jpg", "test_0001.jpg", "test_0002.jpg"):
        shutil.copy(DATASET / "test" / name, folder / name)
    whole = (DATASET / "test" / "test_0003.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    rows = [
        ("test_0000.jpg", "a plate of food"),
        ("truncated.jpg", "a bowl of soup"),
        ("test_0001.jpg", " "),
        ("test_0002.jpg", "a tray of pizza"),
    ]
    (folder / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": name, "text": text}) + "\n" for name, text in rows)
    )
    return folder.parent


def test_evaluate_captions_applies_the_data_checks_and_flags(split_with_bad_rows, tmp_path, capsys):
    from dataclasses import replace

    from evaluate_captions import EvaluationArguments, evaluate

    args = EvaluationArguments(
        models=[f"opt={TINY_MODELS['opt']}"],
        dataset_name=str(split_with_bad_rows),
        generation_max_new_tokens=4,
        embedding_model="none",
        examples=0,
    )
    report = evaluate(args)
    printed = capsys.readouterr().out
    assert "data check: 'test' 4 rows, 2 used, 2 skipped (1 unreadable image, 1 empty caption)" in printed
    assert report["images"] == 2 and len(report["models"]["opt"]["captions"]) == 2
    assert report["references"] == [["a plate of food"], ["a tray of pizza"]]
    with pytest.raises(DatasetError, match=r"2 bad example\(s\) \(first: 'test' row 1 .*truncated.jpg: unreadable"):
        evaluate(replace(args, on_bad_example="error"))
    with pytest.raises(DatasetError, match="no usable example"):
        evaluate(replace(args, max_image_pixels=100))  # every photo is larger
