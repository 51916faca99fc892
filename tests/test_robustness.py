"""Real photo collections and interruptions: bad inputs are converted or skipped and counted, a SIGKILLed
run resumes to the same result, resource problems end in one clear message, secrets stay out of files."""

from __future__ import annotations

import importlib
import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transformers.utils.hub
from safetensors.torch import load_file
from transformers.utils import is_torch_tf32_available

from alt_text_recipes.data.checks import check_split
from alt_text_recipes.data.errors import RecipeError
from alt_text_recipes.data.images import open_checked
from alt_text_recipes.data.sources import load_caption_dataset
from alt_text_recipes.train.arguments import parse_recipe_args
from alt_text_recipes.train.loop import run
from alt_text_recipes.train.modeling import load_processor
from alt_text_recipes.train.settings_parser import parse_tool_args
from alt_text_recipes.train.training_arguments import _has_accelerator

from bad_inputs import BAD, USABLE, write_corpus
from conftest import TINY_MODELS, start_recipe
from hub_standin import LocalHub

TINY_TRAIN = [
    "--config",
    "recipes/configs/tiny/full_ft.yaml",
    "--per_device_train_batch_size",
    "4",
    "--memory_report_steps",
    "0",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("bad-inputs"))


def test_every_bad_input_has_its_outcome_and_no_valid_example_is_dropped(corpus):
    split = load_caption_dataset(str(corpus))["train"]
    tokenizer = load_processor(str(TINY_MODELS["opt"])).tokenizer
    kept, report = check_split(split, "train", tokenizer, max_caption_tokens=64)
    skipped = {Path(problem.path).name: problem.reason for problem in report.problems}
    assert set(skipped) == set(BAD)
    for name, (_, reason) in BAD.items():
        assert reason in skipped[name], (name, skipped[name])
    # Every usable row is kept; caption cleaning takes the emoji off the end of the non-ASCII caption.
    cleaned = {**USABLE, "non_ascii.jpg": "crème brûlée au café on a plate, 北京烤鸭 beside it"}
    assert report.kept == len(kept) == len(USABLE) and set(kept["text"]) == set(cleaned.values())
    assert report.truncated_captions == 1  # the overlong caption is used, truncated, and counted
    images = {caption: image for caption, image in zip(kept["text"], kept["image"], strict=True)}
    from alt_text_recipes.data.images import to_rgb

    assert all(to_rgb(image).mode == "RGB" for image in images.values())


def test_colour_modes_are_converted_faithfully(corpus):
    folder = corpus / "train"
    rgba = np.asarray(open_checked(folder / "rgba.png"))
    assert (rgba == 255).all()  # fully transparent pixels are shown on white, not their hidden colour
    gray16 = np.asarray(open_checked(folder / "gray16.png"))
    assert gray16.shape == (32, 48, 3) and abs(int(gray16[0, 0, 0]) - round(40000 / 65535 * 255)) <= 1
    rotated = open_checked(folder / "exif_rotated.jpg")
    assert rotated.size == (20, 60)  # stored 60×20 with orientation 6: shown upright, rotated
    for name in ("cmyk.jpg", "la.png", "palette.png", "palette_transparent.gif", "gray.png", "one_pixel.png"):
        assert open_checked(folder / name).mode == "RGB"


def test_training_on_a_messy_collection_skips_reports_and_trains(corpus, tmp_path, capsys):
    output_dir = tmp_path / "out"
    trained = run(
        "full_ft",
        [*TINY_TRAIN, "--dataset_name", str(corpus), "--output_dir", str(output_dir), "--max_steps", "4"],
    )
    assert trained.train_seconds > 0 and (output_dir / "model.safetensors").exists()
    stdout = capsys.readouterr().out
    assert f"data check: 'train' {len(USABLE) + len(BAD)} rows, {len(USABLE)} used, {len(BAD)} skipped" in stdout
    assert "1 captions longer than 64 tokens will be truncated" in stdout
    report = json.loads((output_dir / "data_report.json").read_text())[0]
    assert report["kept"] == len(USABLE) and {Path(p["path"]).name for p in report["problems"]} == set(BAD)


def test_bad_examples_stop_the_run_when_asked_to(corpus, tmp_path):
    with pytest.raises(RecipeError, match=rf"^{len(BAD)} bad example\(s\) .*--on_bad_example skip"):
        run(
            "full_ft",
            [*TINY_TRAIN, "--dataset_name", str(corpus), "--output_dir", str(tmp_path), "--on_bad_example", "error"],
        )


def test_a_split_with_no_usable_example_is_a_clear_error(tmp_path):
    split = tmp_path / "data/train"
    split.mkdir(parents=True)
    (split / "broken.jpg").write_text("no image")
    (split / "metadata.jsonl").write_text(json.dumps({"file_name": "broken.jpg", "text": "a plate"}) + "\n")
    with pytest.raises(RecipeError, match="split 'train' has no usable example"):
        run(
            "full_ft",
            [*TINY_TRAIN, "--dataset_name", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out")],
        )


def test_alt_text_skips_unusable_files_with_reasons(corpus, tmp_path):
    from alt_text import AltTextArguments, write_alt_text

    records = write_alt_text(
        AltTextArguments(
            images=[str(corpus / "train")],
            model_name_or_path=str(TINY_MODELS["opt"]),
            output_dir=str(tmp_path),
            generation_max_new_tokens=8,
        )
    )
    skipped = [json.loads(line) for line in (tmp_path / "skipped.jsonl").read_text().splitlines()]
    unreadable = {"truncated.jpg", "corrupt.png", "not_an_image.jpg", "panorama.png", "bomb.png", "empty.jpg"}
    assert {Path(entry["path"]).name for entry in skipped} == unreadable
    assert any("empty file (0 bytes)" in entry["reason"] for entry in skipped if entry["path"].endswith("empty.jpg"))
    images_on_disk = {p.name for p in (corpus / "train").iterdir() if p.suffix != ".jsonl"}
    assert {Path(r.path).name for r in records} == images_on_disk - unreadable


def _losses(output_dir: Path) -> dict[int, float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}


def _weights(output_dir: Path) -> dict[str, torch.Tensor]:
    name = "adapter_model.safetensors" if (output_dir / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(output_dir / name)


def _kill_when_written(process, marker: Path, timeout: float = 240) -> None:
    """SIGKILL `process` (from start_recipe) as soon as `marker` exists (or at once if it never appears in
    `timeout` seconds)."""
    deadline = time.time() + timeout
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.kill()


@pytest.mark.parametrize("recipe", ["full_ft", "lora", "qlora"])
def test_sigkilled_run_resumes_to_the_uninterrupted_result(recipe, tmp_path, capsys):
    args = [
        "--config",
        f"recipes/configs/tiny/{recipe}.yaml",
        "--max_steps",
        "8",
        "--per_device_train_batch_size",
        "8",
        "--logging_steps",
        "1",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--memory_report_steps",
        "0",
        "--warmup_steps",
        "2",
    ]
    # The run to kill starts first, and is killed by a watcher thread once its step-4 checkpoint is complete
    # (with steps 5-8 and two more checkpoints still to go), while this process trains the uninterrupted
    # reference on the other core.
    interrupted = tmp_path / "interrupted"
    process = start_recipe(recipe, *args, "--output_dir", str(interrupted))
    killer = threading.Thread(
        target=_kill_when_written, args=(process, interrupted / "checkpoint-4" / "checkpoint-complete.json")
    )
    killer.start()
    reference = tmp_path / "reference"
    run(recipe, [*args, "--output_dir", str(reference)])
    killer.join()
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (interrupted / "trainer_state.json").exists()

    run(recipe, [*args, "--output_dir", str(interrupted), "--resume_from_checkpoint", "auto"])
    assert "resume: from " in capsys.readouterr().out
    expected, resumed = _losses(reference), _losses(interrupted)
    assert sorted(resumed) == sorted(expected) == list(range(1, 9))
    assert resumed == pytest.approx(expected, rel=1e-4)
    reference_weights, resumed_weights = _weights(reference), _weights(interrupted)
    assert reference_weights.keys() == resumed_weights.keys()
    for key in reference_weights:
        torch.testing.assert_close(resumed_weights[key], reference_weights[key], rtol=1e-4, atol=1e-5)


def test_incomplete_checkpoints_are_never_resumed(tmp_path):
    from alt_text_recipes.train.trainer import resume_checkpoint

    for step, complete in ((5, True), (10, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"")
        if complete:
            (folder / "checkpoint-complete.json").write_text("{}")
    _, training_args, _ = parse_recipe_args(None, ["--output_dir", str(tmp_path), "--resume_from_checkpoint", "auto"])
    assert resume_checkpoint(training_args) == str(tmp_path / "checkpoint-5")
    training_args.resume_from_checkpoint = str(tmp_path / "checkpoint-10")
    with pytest.raises(RecipeError, match="incomplete"):
        resume_checkpoint(training_args)


def test_out_of_memory_ends_with_the_next_techniques_and_their_estimates(tmp_path, monkeypatch):
    from alt_text_recipes.train.trainer import AltTextTrainer

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(AltTextTrainer, "train", out_of_memory)
    with pytest.raises(RecipeError) as error:
        run("full_ft", [*TINY_TRAIN, "--output_dir", str(tmp_path)])
    message = str(error.value)
    assert "out of memory" in message and "Estimated for these settings" in message
    for technique in (
        "--per_device_train_batch_size 2 --gradient_accumulation_steps 2",
        "--gradient_checkpointing",
        "--dtype bfloat16 --bf16",
        "--optim adamw_bnb_8bit",
        "recipes/lora.py",
        "recipes/qlora.py",
    ):
        assert technique in message
    assert message.count(" GB") >= 7


# Options that need a GPU: (flags, the refusal without one, whether this machine supports them). A suite
# that passes only without a GPU is a defect: on a GPU host the same flags must be accepted.
GPU_ONLY_OPTIONS = [
    (["--tf32", "true"], "invalid settings: --tf32 requires Ampere", is_torch_tf32_available),  # Ampere or newer
    (["--use_cpu", "false"], "This machine has no GPU", _has_accelerator),
    (["--fp16", "--bf16", "false"], "--fp16 needs a GPU", _has_accelerator),
]


@pytest.mark.parametrize("flags, refusal, supported", GPU_ONLY_OPTIONS, ids=["tf32", "use_cpu_false", "fp16"])
def test_gpu_only_options_follow_the_hardware(flags, refusal, supported):
    """Refused at start, before any weights load, without a GPU; accepted with one."""
    if supported():
        _, training_args, _ = parse_recipe_args("full_ft", ["--output_dir", "unused", *flags])
        assert not training_args.use_cpu
    else:
        with pytest.raises(RecipeError, match=refusal.replace("-", r"\-")):
            parse_recipe_args("full_ft", ["--output_dir", "unused", *flags])


@pytest.mark.parametrize("cuda", [False, True], ids=["no_gpu", "gpu"])
def test_hardware_check_and_cpu_default_follow_cuda(cuda, monkeypatch):
    """Both branches on any machine: CUDA's presence simulated (parse_recipe_args itself is not called with
    it faked, since TrainingArguments would then set up a device that is not there)."""
    from alt_text_recipes.train.arguments import make_parser
    from alt_text_recipes.train.training_arguments import check_hardware

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    if hasattr(torch, "xpu"):
        monkeypatch.setattr(torch.xpu, "is_available", lambda: False)
    assert _has_accelerator() is cuda
    parser = make_parser("full_ft")
    assert parser.get_default("use_cpu") is (not cuda)  # no --use_cpu: the GPU where there is one
    for use_cpu, fp16, refusal in (
        (False, False, "--use_cpu false asks for a GPU"),
        (True, True, "--fp16 needs a GPU"),
    ):
        settings = SimpleNamespace(use_cpu=use_cpu, fp16=fp16)
        if cuda:
            check_hardware(settings)  # accepted
        else:
            with pytest.raises(RecipeError, match=refusal.replace("-", r"\-")):
                check_hardware(settings)
    check_hardware(SimpleNamespace(use_cpu=True, fp16=False))  # a CPU run is fine everywhere


def test_an_unreachable_model_id_names_itself_and_the_local_folder_option(tmp_path):
    with pytest.raises(RecipeError) as error:
        run(
            "full_ft",
            ["--model_name_or_path", "Salesforce/blip2-opt-2.7b", "--output_dir", str(tmp_path), "--max_steps", "1"],
        )
    assert "cannot load 'Salesforce/blip2-opt-2.7b'" in str(error.value)
    assert "--model_name_or_path models/" in str(error.value)


def test_hub_token_never_reaches_files_or_logs_and_weights_are_safetensors(tmp_path, monkeypatch, capfd):
    planted_env, planted_flag = "hf_PLANTEDenvTOKEN0123456789", "hf_PLANTEDflagTOKEN9876543210"
    monkeypatch.setenv("HF_TOKEN", planted_env)
    monkeypatch.setattr(transformers.utils.hub, "_hf_api", LocalHub(tmp_path / "hub"))
    output_dir = tmp_path / "out"
    run(
        "lora",
        [
            "--config",
            "recipes/configs/tiny/lora.yaml",
            "--output_dir",
            str(output_dir),
            "--max_steps",
            "4",
            "--save_strategy",
            "steps",
            "--save_steps",
            "2",
            "--push_to_hub",
            "--hub_model_id",
            "gourmetgram/secret-test",
            "--hub_token",
            planted_flag,
            "--logging_steps",
            "1",
        ],
    )
    captured = capfd.readouterr()
    files = [p for folder in (output_dir, tmp_path / "hub") for p in folder.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in files) and any(p.name == "README.md" for p in files)
    for token in (planted_env, planted_flag):
        assert token not in captured.out + captured.err
        for path in files:
            assert token.encode() not in path.read_bytes(), path
    weights = {p.name for p in files if p.suffix in (".bin", ".pt", ".pth", ".safetensors", ".ckpt")}
    assert "adapter_model.safetensors" in weights
    assert not weights & {"adapter_model.bin", "pytorch_model.bin", "model.bin"}
    assert os.environ["HF_TOKEN"] == planted_flag  # handed to the Hub client through the environment


class UnreachableHub(LocalHub):
    """A Hub that refuses, as it does offline or without a login: where the Trainer first reaches it."""

    def __init__(self, root: Path, fails: str):
        super().__init__(root)
        self.fails = fails

    def create_repo(self, *args, **kwargs):
        if self.fails == "create_repo":
            raise ConnectionError("Cannot reach https://huggingface.co/api/repos/create: offline")
        return super().create_repo(*args, **kwargs)

    def upload_folder(self, *args, **kwargs):
        if self.fails == "upload_folder":
            raise ConnectionError("Connection reset by peer")
        return super().upload_folder(*args, **kwargs)


def test_a_hub_that_cannot_be_reached_ends_in_one_line_before_training_or_after_saving(tmp_path, monkeypatch):
    push = ["--config", "recipes/configs/tiny/lora.yaml", "--max_steps", "2", "--save_strategy", "no"]
    push += ["--push_to_hub", "--hub_model_id", "gourmetgram/alt-text"]
    # Before training: the repository is made as the trainer is built, so nothing trains in vain.
    monkeypatch.setattr(transformers.utils.hub, "_hf_api", UnreachableHub(tmp_path / "hub", "create_repo"))
    with pytest.raises(RecipeError, match="--push_to_hub: cannot create or reach the Hub repository 'gourmetgram/alt"):
        run("lora", [*push, "--output_dir", str(tmp_path / "early")])
    assert not (tmp_path / "early" / "adapter_model.safetensors").exists()
    # After training: the upload fails, the model and its card are on disk, and the message says how to upload.
    monkeypatch.setattr(transformers.utils.hub, "_hf_api", UnreachableHub(tmp_path / "hub", "upload_folder"))
    with pytest.raises(RecipeError) as error:
        run("lora", [*push, "--output_dir", str(tmp_path / "late")])
    assert f"the model is saved in {tmp_path / 'late'}" in str(error.value)
    assert f"hf upload gourmetgram/alt-text {tmp_path / 'late'}" in str(error.value)
    for name in ("adapter_model.safetensors", "adapter_config.json", "README.md", "processor_config.json"):
        assert (tmp_path / "late" / name).is_file(), name


# A setting out of its range: (flags, what the refusal must say). Each is refused as it is parsed, before
# anything loads: unchecked, a batch of 0 or a LoRA rank of 0 fails deep inside torch or peft, and a negative
# learning rate or a 0-row sample trains on without a word.
OUT_OF_RANGE = [
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size 0: give at least 1"),
    (["--per_device_eval_batch_size", "-2"], "--per_device_eval_batch_size -2: give at least 1"),
    (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps 0: give at least 1"),
    (["--learning_rate", "-0.001"], "--learning_rate -0.001: give 0 or more"),
    (["--weight_decay", "-1"], "--weight_decay -1.0: give 0 or more"),
    (["--dataloader_num_workers", "-1"], "--dataloader_num_workers -1: give 0 or more"),
    (["--max_steps", "-1", "--num_train_epochs", "0"], "--num_train_epochs 0.0: give a positive number of epochs"),
    (["--max_train_samples", "0"], "--max_train_samples 0: give at least 1 row"),
    (["--max_eval_samples", "-5"], "--max_eval_samples -5: give at least 1 row"),
    (["--max_caption_tokens", "0"], "--max_caption_tokens 0: give at least 1 token"),
    (["--memory_report_steps", "-1"], "--memory_report_steps -1: give 0 or more"),
    (["--show_examples", "-1"], "--show_examples -1: give a number of images"),
    (["--caption_samples", "-1"], "--caption_samples -1: give a number of images"),
    (["--generation_max_new_tokens", "0"], "--generation_max_new_tokens 0: give at least 1 token"),
    (["--num_beams", "0"], "--num_beams 0: give at least 1"),
    (["--max_image_pixels", "0"], "--max_image_pixels 0: give at least 1"),
    (["--max_aspect_ratio", "0.5"], "--max_aspect_ratio 0.5: give the longest side over the shortest"),
    (["--validation_split_percentage", "100"], "--validation_split_percentage 100.0: give a percentage"),
    (["--test_split_percentage", "-5"], "--test_split_percentage -5.0: give a percentage"),
    (
        ["--validation_split_percentage", "60", "--test_split_percentage", "40"],
        "holds out 100% of the training images, leaving none to train on",
    ),
    (["--use_peft", "--lora_r", "0"], "--lora_r 0: give a rank of at least 1"),
    (["--use_peft", "--lora_alpha", "0"], "--lora_alpha 0: give a positive scale"),
    (["--use_peft", "--lora_dropout", "1.5"], r"--lora_dropout 1.5: give a probability in \[0, 1\)"),
]


@pytest.mark.parametrize("flags, refusal", OUT_OF_RANGE, ids=[" ".join(flags) for flags, _ in OUT_OF_RANGE])
def test_a_setting_out_of_range_is_refused_as_it_is_parsed(flags, refusal):
    recipe = "lora" if "--use_peft" in flags else "full_ft"
    flags = [flag for flag in flags if flag != "--use_peft"]
    with pytest.raises(RecipeError, match=refusal):
        parse_recipe_args(recipe, [*_tiny(recipe), "--output_dir", "unused", *flags])


def _tiny(recipe: str) -> list[str]:
    return ["--config", f"recipes/configs/tiny/{recipe}.yaml"]


def test_the_edges_of_each_range_are_accepted():
    script_args, training_args, model_args = parse_recipe_args(
        "lora",
        [
            *_tiny("lora"),
            "--output_dir",
            "unused",
            "--learning_rate",
            "0",
            "--dataloader_num_workers",
            "0",
            "--memory_report_steps",
            "0",
            "--max_train_samples",
            "1",
            "--max_aspect_ratio",
            "1",
            "--validation_split_percentage",
            "50",
            "--test_split_percentage",
            "49.5",
            "--lora_dropout",
            "0",
            "--num_train_epochs",
            "0",
            "--max_steps",
            "3",
        ],
    )
    assert (training_args.learning_rate, script_args.max_train_samples, model_args.lora_dropout) == (0, 1, 0)


@pytest.mark.parametrize(
    "tool, flags, refusal",
    [
        ("alt_text", ["--batch_size", "0"], "--batch_size 0: give at least 1 image"),
        ("alt_text", ["--min_new_tokens", "41"], r"--min_new_tokens 41: give 0 up to --generation_max_new_tokens"),
        ("alt_text", ["--num_beams", "0"], "--num_beams 0"),
        ("evaluate_captions", ["--batch_size", "0"], "--batch_size 0: give at least 1 image"),
        ("evaluate_captions", ["--max_samples", "0"], "--max_samples 0: give at least 1 row"),
        ("evaluate_captions", ["--max_aspect_ratio", "0"], "--max_aspect_ratio 0.0"),
        ("evaluate_captions", ["--generation_max_new_tokens", "0"], "--generation_max_new_tokens 0"),
        ("evaluate_captions", ["--no_such_flag", "1"], "unknown setting on the command line: --no_such_flag"),
    ],
)
def test_the_tools_refuse_bad_settings_in_one_line(tool, flags, refusal, monkeypatch, capsys):
    """alt_text.py and evaluate_captions.py parse inside their error handling: one line and exit code 1."""
    module = importlib.import_module(tool)  # recipes/ is on the path: the package's .pth
    monkeypatch.setattr(sys, "argv", [f"{tool}.py", *flags])
    with pytest.raises(SystemExit) as ended:
        module.main()
    assert ended.value.code.startswith("error: ") and "\n" not in ended.value.code
    assert re.search(refusal, ended.value.code), ended.value.code


def test_an_output_folder_blocked_by_a_file_is_refused_before_anything_runs(tmp_path):
    from alt_text import AltTextArguments
    from evaluate_captions import EvaluationArguments
    from merge_adapter import MergeArguments

    a_file = tmp_path / "notes.txt"
    a_file.write_text("a file where a folder should be")
    for output in (a_file, a_file / "run"):  # the folder itself, or one above it
        with pytest.raises(RecipeError, match=f"--output_dir {output}: {a_file} is a file; give a folder"):
            parse_recipe_args("full_ft", [*TINY_TRAIN, "--output_dir", str(output)])
        for tool, required in ((AltTextArguments, []), (MergeArguments, ["--adapter_dir", "x"])):
            with pytest.raises(RecipeError, match=f"--output_dir {output}: {a_file} is a file"):
                parse_tool_args(tool, ["--output_dir", str(output), *required])
    with pytest.raises(RecipeError, match=f"--output_file {a_file}/scores.json: {a_file} is a file"):
        parse_tool_args(EvaluationArguments, ["--output_file", str(a_file / "scores.json")])


def test_a_folder_that_is_not_a_model_is_named(tmp_path):
    from alt_text_recipes.train.modeling import load_config, load_trained

    (tmp_path / "notes.txt").write_text("not a model")
    for load in (load_processor, load_config, load_trained):
        with pytest.raises(RecipeError, match=f"'{tmp_path}' is a folder that holds no saved model: no config.json"):
            load(str(tmp_path))


def test_bad_data_and_unsupported_models_stop_the_run_before_the_weights_load(tmp_path, monkeypatch):
    """The model's family, its LoRA targets and the data are checked first: a typo costs seconds, not a real
    model's load."""
    from transformers import GPT2Config

    import alt_text_recipes.train.loop as train_module

    def weights_loaded(*args, **kwargs):
        raise AssertionError("the weights were loaded before the bad input was found")

    monkeypatch.setattr(train_module, "load_model", weights_loaded)
    args = [*TINY_TRAIN, "--output_dir", str(tmp_path / "out")]
    with pytest.raises(RecipeError, match="data/no-such-photos is no local file or folder"):
        run("full_ft", [*args, "--dataset_name", "data/no-such-photos"])
    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path / "text-only")
    with pytest.raises(RecipeError, match="model type 'gpt2' has no family adapter"):
        run("full_ft", [*args, "--model_name_or_path", str(tmp_path / "text-only")])
    lora_args = [*_tiny("lora"), "--output_dir", str(tmp_path / "lora"), "--lora_target_modules", "q_prj"]
    with pytest.raises(RecipeError, match="LoRA target modules \\['q_prj'\\] match no module"):
        run("lora", lora_args)
    # and with good inputs the same path reaches the weights
    with pytest.raises(AssertionError, match="the weights were loaded"):
        run("full_ft", args)
    with pytest.raises(AssertionError, match="the weights were loaded"):
        run("lora", lora_args[:-2])


def test_an_unknown_setting_is_named_with_the_nearest_known_one(tmp_path):
    preset = tmp_path / "preset.yaml"
    preset.write_text("learning_rat: 0.0001\nper_device_train_batchsize: 2\nzzz_not_a_setting: 1\n")
    cases = [
        (
            ["--lerning_rate", "1e-4"],
            "unknown setting on the command line: --lerning_rate (did you mean --learning_rate?)",
        ),
        (
            ["--config", str(preset)],
            "unknown settings in the config file: learning_rat (did you mean learning_rate?), "
            "per_device_train_batchsize (did you mean per_device_train_batch_size or per_device_eval_batch_size?), "
            "zzz_not_a_setting",
        ),
        (["stray"], "unexpected value on the command line: stray"),
    ]
    for flags, message in cases:
        with pytest.raises(RecipeError) as error:
            parse_recipe_args("lora", ["--output_dir", "unused", *flags])
        assert str(error.value) == f"{message}. `--help` lists every setting."


def test_a_command_line_error_is_its_own_line_without_the_usage(capsys):
    with pytest.raises(SystemExit) as ended:
        parse_recipe_args("lora", ["--output_dir", "unused", "--per_device_train_batch_size", "two"])
    assert ended.value.code == 2
    printed = capsys.readouterr().err.strip().splitlines()
    assert len(printed) == 2, printed  # argparse alone prints its 150-line usage first
    assert printed[0].endswith(
        "error: argument --per_device_train_batch_size/--per-device-train-batch-size: invalid int value: 'two'"
    )
    assert printed[1] == "`--help` lists every setting."


@pytest.mark.parametrize(
    "flags, refusal",
    [
        (["--stage1_max_steps", "0"], "--stage1_max_steps 0: give at least 1 step"),
        (["--stage1_learning_rate", "-1"], "--stage1_learning_rate -1.0: give 0 or more"),
        (["--stage1_num_train_epochs", "0"], "--stage1_num_train_epochs 0.0: give more than 0"),
    ],
)
def test_two_stage_settings_out_of_range_are_refused(flags, refusal):
    from alt_text_recipes.train.stages import TwoStageArguments

    with pytest.raises(RecipeError, match=refusal):
        parse_recipe_args("lora", [*_tiny("lora"), "--output_dir", "unused", *flags], extra=(TwoStageArguments,))
