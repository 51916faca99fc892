"""Watching the alt text while training: at each evaluation the first `--caption_samples` evaluation images, with
the alt text generated for them and their references, go to TensorBoard (images and a table) and to W&B (a table)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import IMAGES, SCALARS, TENSORS, EventAccumulator

from alt_text_recipes.data.errors import RecipeError
from alt_text_recipes.outputs.caption_samples import SAMPLE_IMAGE_SIDE, small_copy
from alt_text_recipes.train.loop import run
from alt_text_recipes.train.trainer import AltTextTrainer

SAMPLES = 3
EVAL_ROWS = 4  # more rows than samples: only the first SAMPLES are shown
# A few LoRA steps of the tiny BLIP-2 on a few photos, evaluated (with generation) every 2 steps.
WATCHED_RUN = [
    "--config", "recipes/configs/tiny/lora.yaml",
    "--max_steps", "4", "--per_device_train_batch_size", "4", "--max_train_samples", "16",
    "--eval_strategy", "steps", "--eval_steps", "2", "--max_eval_samples", str(EVAL_ROWS),
    "--per_device_eval_batch_size", str(EVAL_ROWS), "--generation_max_new_tokens", "8",
    "--embedding_model", "none", "--memory_report_steps", "0", "--save_final_model", "false",
    "--dataloader_num_workers", "0", "--caption_samples", str(SAMPLES),
]  # fmt: skip
EVAL_STEPS = [2, 4]


@pytest.fixture
def generated(monkeypatch) -> list[list[str]]:
    """The alt text the trainer generates, one list per evaluation."""
    calls: list[list[str]] = []
    generate = AltTextTrainer._generate_sharded

    def recorded(trainer, dataset):
        calls.append(generate(trainer, dataset))
        return calls[-1]

    monkeypatch.setattr(AltTextTrainer, "_generate_sharded", recorded)
    return calls


def event_file_of(output_dir: Path) -> EventAccumulator:
    """Everything TensorBoardCallback's run folder (output_dir/runs/<time>_<host>) holds, nothing sampled away."""
    (run_folder,) = (output_dir / "runs").iterdir()
    events = EventAccumulator(str(run_folder), size_guidance={IMAGES: 0, TENSORS: 0, SCALARS: 0})
    events.Reload()
    return events


def staged_wandb_files(data_dir: Path) -> list[bytes]:
    """What a W&B run staged for upload: the media inside logged tables, and the tables that refer to them."""
    return [path.read_bytes() for path in (data_dir / "artifacts/staging").iterdir()]


def same_picture(png: bytes, image: Image.Image) -> bool:
    return np.array_equal(np.asarray(Image.open(io.BytesIO(png))), np.asarray(image.convert("RGB")))


def test_tensorboard_shows_the_first_images_with_their_alt_text_at_each_evaluation(food_splits, generated, tmp_path):
    run("lora", [*WATCHED_RUN, "--output_dir", str(tmp_path), "--report_to", "tensorboard"])

    events = event_file_of(tmp_path)
    assert [event.step for event in events.Scalars("eval/cider")] == EVAL_STEPS
    assert len(generated) == len(EVAL_STEPS)
    validation = food_splits["validation"]
    image_tags = [f"eval/alt_text_image_{index}" for index in range(SAMPLES)]
    assert sorted(events.Tags()["images"]) == image_tags
    for index, tag in enumerate(image_tags):
        logged = events.Images(tag)
        assert [event.step for event in logged] == EVAL_STEPS  # the same image at every evaluation
        assert all(same_picture(event.encoded_image_string, validation[index]["image"]) for event in logged)
    tables = events.Tensors("eval/alt_text/text_summary")
    assert [event.step for event in tables] == EVAL_STEPS
    for table, captions in zip(tables, generated, strict=True):
        rows = table.tensor_proto.string_val[0].decode().splitlines()[2:]  # under the header and its rule
        assert rows == [f"| {index} | {captions[index]} | {validation[index]['text']} |" for index in range(SAMPLES)]


def test_wandb_gets_a_table_of_images_alt_text_and_references(food_splits, generated, tmp_path, monkeypatch):
    import wandb

    for variable, folder in {"WANDB_DIR": "runs", "WANDB_DATA_DIR": "data", "WANDB_CACHE_DIR": "cache"}.items():
        monkeypatch.setenv(variable, str(tmp_path / folder))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    try:
        run("lora", [*WATCHED_RUN, "--output_dir", str(tmp_path / "out"), "--report_to", "wandb"])
    finally:
        wandb.finish()

    # The run's media files hold the text; wandb 0.31 keeps the images of a table in the artifact it logs with it
    # (staged for upload), whose copy of the table refers to each image by its hash.
    (run_folder,) = (tmp_path / "runs/wandb").glob("offline-run-*")
    table_files = sorted(  # alt_text_<W&B's own step>_<hash>.table.json
        (run_folder / "files/media/table/eval").glob("alt_text_*.table.json"),
        key=lambda path: int(path.name.split("_")[2]),
    )
    validation = food_splits["validation"]
    rows_by_evaluation = [
        [[captions[index], validation[index]["text"]] for index in range(SAMPLES)] for captions in generated
    ]
    assert len(table_files) == len(EVAL_STEPS)
    for table_file, rows in zip(table_files, rows_by_evaluation, strict=True):
        table = json.loads(table_file.read_text())
        assert table["columns"] == ["image", "generated", "reference"]
        assert [row[1:] for row in table["data"]] == rows and all(caption for caption, _ in rows)
    staged = staged_wandb_files(tmp_path / "data")
    staged_by_hash = {hashlib.sha256(content).hexdigest(): content for content in staged}
    staged_tables = [json.loads(content) for content in staged if content.startswith(b'{"_type": "table"')]
    assert staged_tables  # (wandb stages a table more than once)
    for table in staged_tables:
        assert [row[1:] for row in table["data"]] in rows_by_evaluation
        for index, (image, _, _) in enumerate(table["data"]):
            assert same_picture(staged_by_hash[image["sha256"]], validation[index]["image"])


def test_no_caption_samples_logs_no_images(generated, tmp_path):
    run(
        "lora",
        [*WATCHED_RUN, "--output_dir", str(tmp_path), "--report_to", "tensorboard", "--caption_samples", "0",
         "--max_steps", "2"],
    )  # fmt: skip

    events = event_file_of(tmp_path)
    assert [event.step for event in events.Scalars("eval/cider")] == [2] and generated  # alt text was generated
    assert events.Tags()["images"] == []
    assert "eval/alt_text/text_summary" not in events.Tags()["tensors"]


def test_no_samples_are_made_when_nothing_shows_them(generated, tmp_path, monkeypatch):
    made: list[int] = []
    monkeypatch.setattr("alt_text_recipes.train.trainer.first_samples", lambda *args: made.append(args[-1]) or [])
    run(
        "lora",
        [*WATCHED_RUN, "--output_dir", str(tmp_path), "--report_to", "none", "--max_steps", "2"],
    )

    assert generated and made == []  # alt text was generated and scored, but no thumbnails were made for nobody


def test_a_negative_number_of_caption_samples_is_refused(tmp_path):
    with pytest.raises(RecipeError, match=r"--caption_samples -1: give a number of images, 0 for none"):
        run("lora", [*WATCHED_RUN, "--output_dir", str(tmp_path), "--caption_samples", "-1"])


def test_logged_images_are_small_copies_of_large_photos():
    large = Image.new("RGBA", (4 * SAMPLE_IMAGE_SIDE, 2 * SAMPLE_IMAGE_SIDE), (255, 0, 0, 0))
    copy = small_copy(large)
    assert copy.size == (SAMPLE_IMAGE_SIDE, SAMPLE_IMAGE_SIDE // 2) and copy.mode == "RGB"
    assert large.size == (4 * SAMPLE_IMAGE_SIDE, 2 * SAMPLE_IMAGE_SIDE)  # the evaluation's image is left as it is
    assert small_copy(Image.new("RGB", (64, 32))).size == (64, 32)  # never enlarged
