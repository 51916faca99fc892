"""--streaming: WebDataset shards and imagefolder folders read as a stream, split across processes with no
example seen twice, checked as they are read (counts in data_report.json), and trained on."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from PIL import Image
from torch.utils.data import DataLoader

from alt_text_recipes.data.errors import RecipeError
from alt_text_recipes.data.streaming import BadStreamExample, StreamCheck, checked_stream, load_caption_stream
from alt_text_recipes.train.arguments import parse_recipe_args

from conftest import DATASET, REPO_ROOT, logged_losses, run_recipe, torchrun

BROKEN_IMAGE = b"this is not a PNG"


def _png(index: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (index % 256, (index * 7) % 256, 90)).save(buffer, "PNG")
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(
    folder: Path,
    split: str,
    examples: int,
    shards: int,
    start: int = 0,
    as_json: bool = False,
    broken_image: int | None = None,
    empty_caption: int | None = None,
) -> list[str]:
    """WebDataset shards `<split>-NNN.tar` of 32×32 PNGs captioned "a plate of dish N" (long enough to be
    kept by caption cleaning); returns the captions written."""
    folder.mkdir(parents=True, exist_ok=True)
    captions = []
    for shard in range(shards):
        with tarfile.open(folder / f"{split}-{shard:03d}.tar", "w") as tar:
            for index in range(start + shard * examples // shards, start + (shard + 1) * examples // shards):
                caption = "" if index == empty_caption else f"a plate of dish {index}"
                _add(tar, f"{index:06d}.png", BROKEN_IMAGE if index == broken_image else _png(index))
                if as_json:
                    _add(tar, f"{index:06d}.json", json.dumps({"caption": caption, "width": 32}).encode())
                else:
                    _add(tar, f"{index:06d}.txt", caption.encode())
                captions.append(caption)
    return captions


def test_two_ranks_read_disjoint_parts_that_together_cover_every_example(tmp_path):
    shards = tmp_path / "shards"
    written = write_shards(shards, "train", examples=300, shards=6, broken_image=123)
    out = tmp_path / "seen"
    command = torchrun("tests/stream_worker.py", str(shards), str(out))
    result = subprocess.run(
        command,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )  # gloo on the CPU
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    ranks = [json.loads(Path(f"{out}.rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [rank["world_size"] for rank in ranks] == [2, 2]
    seen = [set(rank["captions"]) for rank in ranks]
    assert all(len(rank["captions"]) == len(set(rank["captions"])) for rank in ranks)  # nothing twice on a rank
    assert not seen[0] & seen[1]  # nor on both ranks
    assert seen[0] | seen[1] == set(written) - {"a plate of dish 123"}  # every good example, on one rank or the other
    assert 100 <= len(seen[0]) <= 200  # each rank read its own part (three of the six shards), not all of it
    reports = [rank["report"] for rank in ranks]
    assert sum(report["rows"] for report in reports) == 300  # counted across each rank's two DataLoader workers
    assert sum(report["kept"] for report in reports) == 299
    problems = [problem for report in reports for problem in report["problems"]]
    assert [(p["path"], p["reason"]) for p in problems] == [("000123.png", "not an image (unrecognised file format)")]


def test_streaming_recipe_trains_from_shards_and_reports_the_skipped_examples(tmp_path):
    shards = tmp_path / "shards"
    write_shards(shards, "train", examples=40, shards=2, as_json=True, broken_image=5, empty_caption=30)
    write_shards(shards, "validation", examples=8, shards=1, start=1000, as_json=True)
    output = tmp_path / "run"
    result = run_recipe(
        "full_ft",
        "--config",
        "recipes/configs/tiny/full_ft.yaml",
        "--dataset_name",
        str(shards),
        "--streaming",
        "--max_steps",
        "3",
        "--per_device_train_batch_size",
        "4",
        "--logging_steps",
        "1",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "3",
        "--max_eval_samples",
        "4",
        "--caption_metrics",
        "false",
        "--save_final_model",
        "false",
        "--output_dir",
        str(output),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert len(logged_losses(output)) == 3
    history = json.loads((output / "trainer_state.json").read_text())["log_history"]
    assert any("eval_loss" in entry for entry in history)
    train, validation = json.loads((output / "data_report.json").read_text())
    assert (
        train["split"] == "train" and train["rows"] - train["kept"] == 2
    )  # read as far as training (and prefetch) went
    assert train["kept"] >= 12  # 3 steps of 4
    assert train["reasons"] == {"not an image": 1, "empty caption": 1}
    assert {p["path"] for p in train["problems"]} == {"000005.png", "000030.png"}
    assert validation == {**validation, "split": "validation", "rows": 4, "kept": 4}
    assert "data check: 'train'" in result.stdout and "2 skipped" in result.stdout


def test_streaming_without_max_steps_is_refused_with_the_reason():
    with pytest.raises(RecipeError, match="--streaming needs --max_steps: a streamed data set has no length"):
        parse_recipe_args("full_ft", ["--streaming", "--output_dir", "unused"])


def test_a_bad_example_stops_the_stream_with_one_clear_error_under_the_error_policy(tmp_path):
    write_shards(tmp_path, "train", examples=6, shards=1, broken_image=2)
    check = StreamCheck("train", "error")
    stream = checked_stream(load_caption_stream(str(tmp_path / "train-*.tar"))["train"], check)
    with pytest.raises(BadStreamExample) as raised:  # raised in a DataLoader worker, re-raised here
        list(DataLoader(stream, batch_size=2, num_workers=1, collate_fn=list))
    check.close()
    assert str(raised.value) == (
        "bad example in the 'train' stream (000002.png: not an image (unrecognised file "
        "format)). Fix it, or pass --on_bad_example skip to leave it out."
    )


def test_a_glob_of_train_shards_finds_the_validation_shards_named_alike(tmp_path):
    train = write_shards(tmp_path, "train", examples=10, shards=2)
    validation = write_shards(tmp_path, "validation", examples=4, shards=1, start=100)
    streams = load_caption_stream(str(tmp_path / "train-*.tar"))
    assert sorted(streams) == ["train", "validation"]
    assert sorted(example["text"] for example in streams["train"]) == sorted(train)
    assert [example["text"] for example in streams["validation"]] == validation


def test_an_imagefolder_streams_every_row_of_its_metadata():
    rows = [json.loads(line) for line in (DATASET / "validation" / "metadata.jsonl").read_text().splitlines()]
    streams = load_caption_stream(str(DATASET))
    assert sorted(streams) == ["test", "train", "validation"]
    streamed = list(streams["validation"])
    assert [example["text"] for example in streamed] == [row["text"] for row in rows]
    with Image.open(DATASET / "validation" / rows[0]["file_name"]) as first:
        assert streamed[0]["image"].size == first.size


def test_the_out_of_memory_advice_for_a_stream_does_not_read_the_stream_ahead(tmp_path):
    """The advice's estimate takes the caption-length cap for a stream: reading the whole training split
    ahead (possibly larger than the disk) to count its tokens is what streaming avoids."""
    from alt_text_recipes.memory.estimator import caption_token_count

    script_args, _, model_args = parse_recipe_args(
        "full_ft",
        ["--streaming", "--max_steps", "2", "--dataset_name", str(tmp_path / "gone-*.tar"), "--output_dir", "x"],
    )
    assert caption_token_count(script_args, model_args, seed=0) == script_args.max_caption_tokens + 1


def _split_folders(root: Path, rows: int = 3) -> Path:
    """train/ and validation/ holding the embedded set's first photos and their metadata.jsonl (a download)."""
    for split in ("train", "validation"):
        lines = (DATASET / split / "metadata.jsonl").read_text().splitlines()[:rows]
        (root / split).mkdir(parents=True)
        (root / split / "metadata.jsonl").write_text("\n".join(lines) + "\n")
        for line in lines:
            name = json.loads(line)["file_name"]
            (root / split / name).write_bytes((DATASET / split / name).read_bytes())
    return root


def test_a_folder_streams_in_the_layout_it_is_read_in_without_streaming(tmp_path):
    root = _split_folders(tmp_path / "download")
    (root / "dataset_infos.json").write_text(json.dumps({"default": {"description": "food"}}))
    streams = load_caption_stream(str(root))
    assert {name: len(list(split)) for name, split in streams.items()} == {"train": 3, "validation": 3}
    (root / "captions.csv").write_text("image,text\ntrain/train_0000.jpg,a plate\n")  # a second possible reading
    with pytest.raises(RecipeError, match="can be read two ways.*--data_format csv .*--data_format imagefolder"):
        load_caption_stream(str(root))
    declared = load_caption_stream(str(root), data_format="imagefolder")
    assert {name: len(list(split)) for name, split in declared.items()} == {"train": 3, "validation": 3}
    with pytest.raises(RecipeError, match="is read as caption files.*train on it without --streaming"):
        load_caption_stream(str(root), data_format="csv")


def test_a_declared_webdataset_streams_its_shards_and_a_wrong_declaration_is_refused(tmp_path):
    captions = write_shards(tmp_path / "shards", "train", examples=6, shards=2)
    streams = load_caption_stream(str(tmp_path / "shards"), data_format="webdataset")
    assert sorted(example["text"] for example in streams["train"]) == sorted(captions)
    with pytest.raises(RecipeError, match="--data_format webdataset: .* it holds no .tar shards"):
        load_caption_stream(str(_split_folders(tmp_path / "photos")), data_format="webdataset")
    with pytest.raises(RecipeError, match="--data_format imagefolder: .* it holds no photos"):
        load_caption_stream(str(tmp_path / "shards"), data_format="imagefolder")
