"""Alt text for a catalogue (recipes/alt_text.py): shared over processes, resumable after a kill, idempotent,
and int8 on the CPU. The tiny BLIP-2 on copies of the embedded test photos."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from alt_text_recipes.data.errors import RecipeError

from conftest import CPU_ONLY_ENV, DATASET, REPO_ROOT, TINY_MODELS, accelerate_launch

# Greedy generation forced to 12 tokens, one image per call: slow enough to kill mid-run, and every image's
# text independent of which others share its batch.
SETTINGS = ["--generation_max_new_tokens", "12", "--min_new_tokens", "12", "--batch_size", "1"]
PHOTOS = 16
DELIVERABLES = ("alt_text.jsonl", "alt_text.csv", "skipped.jsonl")


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in sorted((DATASET / "test").glob("*.jpg"))[:PHOTOS]:
        shutil.copy(photo, folder)
    (folder / "broken.jpg").write_text("not an image")  # set aside with its reason, never retried
    return folder


def write_in_process(photos: Path, output: Path, *flags: str) -> list:
    from alt_text import AltTextArguments, write_alt_text
    from trl import TrlParser

    arguments = ["--model_name_or_path", str(TINY_MODELS["opt"]), "--images", str(photos), "--output_dir", str(output)]
    (args,) = TrlParser(AltTextArguments).parse_args_and_config([*arguments, *SETTINGS, *flags])
    return write_alt_text(args)


def two_processes(photos: Path, output: Path) -> list[str]:
    return accelerate_launch(
        "ddp4.yaml", "recipes/alt_text.py", "--model_name_or_path", str(TINY_MODELS["opt"]), "--images", str(photos),
        "--output_dir", str(output), *SETTINGS,
    )  # fmt: skip


def kill_with_workers(run: subprocess.Popen) -> None:
    """SIGKILL the launcher and the worker processes it started (in sessions of their own), mid-write or not."""
    processes = [psutil.Process(run.pid), *psutil.Process(run.pid).children(recursive=True)]
    for process in processes:
        process.send_signal(signal.SIGKILL)
    psutil.wait_procs(processes, timeout=30)


def logged_lines(output: Path) -> int:
    return sum(len(log.read_text().splitlines()) for log in (output / "parts").glob("process-*.jsonl"))


def same_deliverables(one: Path, other: Path) -> None:
    for name in DELIVERABLES:
        assert (one / name).read_text() == (other / name).read_text(), name
    assert (one / "index.html").read_text().replace(one.name, "~") == (other / "index.html").read_text().replace(
        other.name, "~"
    )


def test_a_killed_two_process_run_resumes_to_the_single_process_result(photos, tmp_path):
    single = tmp_path / "single"
    records = write_in_process(photos, single)
    assert len(records) == PHOTOS and all(record.alt_text for record in records)

    shared = tmp_path / "shared"
    run = subprocess.Popen(  # cold (python_for_ranks): kill_with_workers finds its ranks among its descendants
        two_processes(photos, shared), cwd=REPO_ROOT, env=CPU_ONLY_ENV, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (shared / "parts").is_dir() or logged_lines(shared) < 2:
        assert run.poll() is None, run.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no alt text was written in 2 minutes"
        time.sleep(0.02)
    kill_with_workers(run)
    written_before_kill = logged_lines(shared)
    assert 2 <= written_before_kill < PHOTOS + 1, "the run was not killed midway"
    assert not (shared / "alt_text.jsonl").exists()

    rerun = subprocess.run(
        two_processes(photos, shared), cwd=REPO_ROOT, env=CPU_ONLY_ENV, capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    same_deliverables(single, shared)  # same order and content: no duplicate, no gap
    assert "over 2 process(es)" in rerun.stdout and "images/s" in rerun.stdout
    entries = [
        json.loads(line) for log in (shared / "parts").glob("process-*.jsonl") for line in log.read_text().splitlines()
    ]
    assert len(entries) == PHOTOS + 1  # each image written once: the rerun skipped what the killed run had written
    assert sorted(e["resolved"] for e in entries) == sorted(str(p.resolve()) for p in photos.iterdir())


def test_a_rerun_writes_only_new_or_edited_photos_and_overwrite_starts_over(photos, tmp_path, capsys):
    output = tmp_path / "alt"
    write_in_process(photos, output)
    first = (output / "alt_text.jsonl").read_text()
    log = output / "parts" / "process-0.jsonl"
    with log.open("a") as file:
        file.write('{"resolved": "/photos/half-written')  # a kill mid-line

    capsys.readouterr()
    write_in_process(photos, output)
    assert f"all {PHOTOS + 1} images were already written" in capsys.readouterr().out
    assert (output / "alt_text.jsonl").read_text() == first

    edited = sorted(photos.glob("*.jpg"))[3]
    shutil.copy(sorted(photos.glob("*.jpg"))[10], edited)  # the same name, another photo
    write_in_process(photos, output)
    assert f"this run wrote 1 images ({PHOTOS} already written)" in capsys.readouterr().out
    rows = {
        json.loads(line)["path"]: json.loads(line) for line in (output / "alt_text.jsonl").read_text().splitlines()
    }
    assert rows[str(edited)]["alt_text"] == rows[str(sorted(photos.glob("*.jpg"))[10])]["alt_text"]

    write_in_process(photos, output, "--overwrite", "true")
    assert f"this run wrote {PHOTOS + 1} images (0 already written)" in capsys.readouterr().out
    assert len(log.read_text().splitlines()) == PHOTOS + 1


def test_a_rerun_with_other_settings_is_refused(photos, tmp_path):
    write_in_process(photos, tmp_path / "alt")
    with pytest.raises(RecipeError, match=r"other settings \(num_beams: 1 then, 2 now\).*--overwrite"):
        write_in_process(photos, tmp_path / "alt", "--num_beams", "2")


def test_the_old_model_flag_is_an_alias():
    from alt_text import AltTextArguments
    from trl import TrlParser

    (args,) = TrlParser(AltTextArguments).parse_args_and_config(["--model", "folder", "--images", "x"])
    assert args.model_name_or_path == "folder"


def test_int8_alt_text_on_the_cpu_and_its_refusals(photos, tmp_path):
    write_in_process(photos, tmp_path / "fp32", "--dtype", "float32")
    write_in_process(photos, tmp_path / "int8", "--quantize", "int8")
    fp32, int8 = (
        [json.loads(line) for line in (tmp_path / name / "alt_text.jsonl").read_text().splitlines()]
        for name in ("fp32", "int8")
    )
    assert [row["path"] for row in int8] == [row["path"] for row in fp32]
    assert all(row["quantize"] == "int8" and row["alt_text"] for row in int8)
    agreeing = sum(a["generated"] == b["generated"] for a, b in zip(fp32, int8, strict=True))
    assert agreeing >= len(fp32) // 2, f"int8 agrees with fp32 on only {agreeing} of {len(fp32)} photos"
    with pytest.raises(RecipeError, match="leave --dtype at auto or float32"):
        write_in_process(photos, tmp_path / "bf16", "--quantize", "int8", "--dtype", "bfloat16")
    with pytest.raises(RecipeError, match="CPU int8 kernels"):
        write_in_process(photos, tmp_path / "gpu", "--quantize", "int8", "--use_cpu", "false")
