"""The memory estimator: exact parameter counts, and predictions that match what the tiny twins measure."""

from __future__ import annotations

import functools
import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from alt_text_recipes.memory.estimator import GB, estimate, layer_stacks, training_plan
from alt_text_recipes.outputs.experiment_matrix import launch_command, load_preset, read_measurements
from alt_text_recipes.train.arguments import parse_recipe_args
from alt_text_recipes.train.families import FAMILIES
from alt_text_recipes.train.modeling import load_config, meta_model

from conftest import REPO_ROOT, python_for_runs, run_recipe, selected_params

# Exact parameter counts of the real models (meta-device instantiation of their configs).
REAL_PARAMETER_COUNTS = {
    "Salesforce/blip2-opt-2.7b": 3_744_679_936,
    "Salesforce/blip2-opt-6.7b": 7_752_738_304,
    "Salesforce/blip2-flan-t5-xl": 3_876_648_448,
    "Salesforce/blip2-flan-t5-xxl": 12_098_000_384,
    "HuggingFaceM4/idefics2-8b": 8_402_768_112,
    "HuggingFaceM4/Idefics3-8B-Llama3": 8_462_086_384,
    "llava-hf/llava-1.5-7b-hf": 7_063_427_072,
}


@pytest.mark.parametrize("model", sorted(REAL_PARAMETER_COUNTS))
def test_shipped_configs_give_exact_parameter_counts(model):
    assert (
        sum(p.numel() for p in meta_model(load_config(model, shipped_first=True)).parameters())
        == REAL_PARAMETER_COUNTS[model]
    )


def _estimate(preset_name: str, *flags: str, caption_tokens: int = 20, **options):
    preset = load_preset(preset_name)
    script_args, training_args, model_args = parse_recipe_args(preset.recipe, ["--config", str(preset.path), *flags])
    return estimate(script_args, training_args, model_args, caption_tokens, **options)


def test_real_presets_follow_the_expected_arithmetic():
    baseline = _estimate("baseline")
    n = REAL_PARAMETER_COUNTS["Salesforce/blip2-opt-2.7b"]
    assert baseline.num_params == n and baseline.trainable_params == n
    assert baseline.params_gb == pytest.approx(4 * n / 2**30, rel=1e-3)  # fp32
    assert baseline.optimizer_gb == pytest.approx(8 * n / 2**30, rel=1e-3)  # AdamW, two fp32 moments
    assert not baseline.fits  # batch 64 in fp32 does not fit 80 GB
    bf16 = _estimate("bf16_true")
    assert bf16.params_gb == pytest.approx(2 * n / 2**30, rel=1e-3)
    assert bf16.total_gb < _estimate("bf16_mixed").total_gb < _estimate("grad_accumulation").total_gb
    # Accumulation does not change memory; a smaller batch only shrinks activations.
    assert _estimate("grad_accumulation").total_gb == pytest.approx(_estimate("reduced_batch").total_gb)
    assert _estimate("reduced_batch").activations_gb == pytest.approx(baseline.activations_gb / 4, rel=1e-6)
    assert _estimate("sgd").optimizer_gb == 0
    xxl = _estimate("xxl_batch1")
    assert not xxl.fits and xxl.params_gb + xxl.grads_gb + xxl.optimizer_gb > 80  # states alone overflow
    # bf16 AdamW keeps two bf16 moments (4 B/param); 8-bit Adam two 1-byte moments + block scales.
    assert _estimate("adam_8bit").optimizer_gb < 0.55 * _estimate("even_larger").optimizer_gb
    assert _estimate("activation_checkpointing").activations_gb < 0.3 * _estimate("adam_8bit").activations_gb
    offload = _estimate("cpu_offload")
    assert offload.optimizer_gb == 0 and offload.host_gb > 150  # 16 B/param of 12B on the host
    qlora, lora = _estimate("qlora"), _estimate("lora")
    assert qlora.params_gb < 0.4 * lora.params_gb and qlora.fits
    assert lora.trainable_params < 0.01 * lora.num_params


def test_strategies_divide_memory_per_gpu():
    single = _estimate("even_larger")
    fsdp = _estimate("even_larger", strategy="fsdp", num_gpus=4)
    ddp = _estimate("even_larger", strategy="ddp", num_gpus=4)
    assert fsdp.optimizer_gb == pytest.approx(single.optimizer_gb / 4)
    assert fsdp.total_gb < single.total_gb < ddp.total_gb


def test_estimate_cli_prints_json():
    result = run_recipe(
        "estimate", "qlora", "--config", "recipes/configs/matrix/qlora.yaml", "--gpu_memory", "24", "--json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout[result.stdout.index("{") :])
    for key in (
        "num_params",
        "trainable_params",
        "params_gb",
        "grads_gb",
        "optimizer_gb",
        "activations_gb",
        "total_gb",
        "fits",
    ):
        assert key in report
    assert report["num_params"] == REAL_PARAMETER_COUNTS["Salesforce/blip2-flan-t5-xxl"]


# One preset per branch of the estimator (precision, optimizer, checkpointing, ZeRO offload, LoRA, 4-bit);
# the other six differ only in batch size or model size, which the arithmetic test covers. Every preset's
# twin is in benchmarks/results/matrix-cpu (`python recipes/experiments.py --tiny --all`).
# What the twins can show: that each preset runs as a user launches it and that the parameter, gradient and
# optimizer-state bytes are exact for each technique. What they cannot: activations and totals. A twin's
# activations are a few MB and its peak is ~90% the Python process, so a total within any tolerance says
# nothing about the estimate; tests/test_real_width.py compares every part at real width instead.
TWIN_PRESETS = [
    "baseline",
    "bf16_true",
    "bf16_mixed",
    "adam_8bit",
    "activation_checkpointing",
    "cpu_offload",
    "sgd",
    "lora",
    "qlora",
]


@pytest.fixture(scope="module")
def tiny_matrix(request, tmp_path_factory):
    """The tiny twins of the selected TWIN_PRESETS, each run as a user runs it (`python recipes/<recipe>.py`, or
    `accelerate launch` for a preset with an accelerate config), two at a time, beside the estimate the
    experiment runner makes for the same arguments: {preset: (run, measured GB, estimated GB)}."""
    from experiments import predict

    root = tmp_path_factory.mktemp("matrix")
    presets = [
        load_preset(p["preset"]) for p in selected_params(request, "test_estimate_matches_tiny_twin_measurement")
    ]
    estimates = {preset.name: predict(preset, True, root / preset.name, 80.0) for preset in presets}
    # CPU twins, estimated as CPU runs: on a GPU host the runs do not see the GPU either.
    cpu_only = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}

    def run(preset):
        command = [python_for_runs(), *launch_command(preset, True, root / preset.name)[1:]]  # the runner's, warm
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **cpu_only}
        return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env)

    with ThreadPoolExecutor(max_workers=2) as pool:  # threads only wait on the processes
        runs = dict(zip([preset.name for preset in presets], pool.map(run, presets), strict=True))
    return {name: (runs[name], read_measurements(root / name)[0], estimates[name]) for name in runs}


@pytest.mark.parametrize("preset", TWIN_PRESETS)
def test_estimate_matches_tiny_twin_measurement(tiny_matrix, preset):
    run, measured, predicted = tiny_matrix[preset]
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for part in ("params", "grads", "optimizer"):
        assert predicted[f"{part}_gb"] == pytest.approx(measured[part], rel=0.01, abs=1e-6), part


def test_experiment_runner_writes_results_a_table_and_a_chart(tmp_path):
    """`python recipes/experiments.py --tiny <preset>`: the preset run in its own process, and its results."""
    result = run_recipe("experiments", "--tiny", "lora", "--out_dir", str(tmp_path), env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (lora,) = json.loads((tmp_path / "results.json").read_text())["results"]
    assert lora["status"] == "ok" and lora["estimate"]["params_gb"] == pytest.approx(lora["measured"]["params"])
    table = (tmp_path / "results.md").read_text()
    assert "python recipes/experiments.py --tiny lora" in table and "| lora | ok |" in table
    assert (tmp_path / "memory.png").stat().st_size > 10_000


def test_multi_gpu_presets_are_estimated_per_gpu_as_their_strategy_divides():
    def multi(name):
        path = REPO_ROOT / f"recipes/configs/multi_gpu/{name}.yaml"
        script_args, training_args, model_args = parse_recipe_args("full_ft", ["--config", str(path)])
        return estimate(script_args, training_args, model_args, 20)

    single, ddp, fsdp = multi("single_gpu_baseline"), multi("ddp4_bf16"), multi("fsdp4_bf16")
    assert (ddp.strategy, ddp.num_gpus, fsdp.strategy, fsdp.num_gpus) == ("ddp", 4, "fsdp", 4)
    assert ddp.params_gb == single.params_gb and ddp.grads_gb == pytest.approx(2 * single.grads_gb)
    assert fsdp.optimizer_gb == pytest.approx(single.optimizer_gb / 4)
    assert fsdp.total_gb < single.total_gb < ddp.total_gb


# --- Other model families: Idefics2 and LLaVA (meta-device configs, no weights) ---------------------------------

IDEFICS2 = "HuggingFaceM4/idefics2-8b"
LLAVA = "llava-hf/llava-1.5-7b-hf"
# Idefics2-8B's parameters per part (families/idefics2.py): SigLIP tower; perceiver resampler + projection;
# Mistral + lm_head.
IDEFICS2_PART_COUNTS = {"vision": 417_792_240, "connector": 743_219_200, "language": 7_241_756_672}
IDEFICS2_PRESETS = {
    "lora": ("single", 1),
    "qlora": ("single", 1),
    "lora_ddp4": ("ddp", 4),
    "full": ("single", 1),
    "full_model_parallel": ("model_parallel", 2),
    "full_fsdp4": ("fsdp", 4),
}


@functools.cache
def _idefics2(name: str, *flags: str, **options):
    preset = load_preset(str(REPO_ROOT / f"recipes/configs/idefics2/{name}.yaml"))
    script_args, training_args, model_args = parse_recipe_args(preset.recipe, ["--config", str(preset.path), *flags])
    return estimate(script_args, training_args, model_args, 20, **options)


def _recipe_estimate(recipe: str, *flags: str):
    script_args, training_args, model_args = parse_recipe_args(recipe, list(flags))
    return estimate(script_args, training_args, model_args, 20)


def test_families_idefics2_parts_add_up_to_the_model():
    model = meta_model(load_config(IDEFICS2, shipped_first=True))
    counts = {part: 0 for part in (*IDEFICS2_PART_COUNTS, "other")}
    for name, parameter in model.named_parameters():
        counts[FAMILIES["idefics2"].part_of(name)] += parameter.numel()
    assert counts == {**IDEFICS2_PART_COUNTS, "other": 0}
    assert sum(IDEFICS2_PART_COUNTS.values()) == REAL_PARAMETER_COUNTS[IDEFICS2]


@pytest.mark.parametrize("model", sorted(REAL_PARAMETER_COUNTS))
def test_families_layer_stacks_name_real_layer_lists(model):
    """The stacks the activation arithmetic uses exist in the model (model parallel places them by name)."""
    config = load_config(model, shipped_first=True)
    module = meta_model(config)
    stacks, _ = layer_stacks(config, 20, 1, {})
    for stack in stacks:
        layers = module.get_submodule(stack.modules)
        assert len(layers) == stack.layers if isinstance(layers, torch.nn.ModuleList) else stack.layers == 1


@pytest.mark.parametrize("name", sorted(IDEFICS2_PRESETS))
def test_families_idefics2_presets_are_estimated_with_their_strategy(name):
    options = {"num_gpus": 2} if name == "full_model_parallel" else {}
    result = _idefics2(name, **options)
    assert (result.strategy, result.num_gpus) == IDEFICS2_PRESETS[name]
    assert result.num_params == REAL_PARAMETER_COUNTS[IDEFICS2]
    assert 0 < result.total_gb and result.fits  # each preset is sized for 80 GB GPUs


def test_families_idefics2_estimates_order_as_the_techniques_promise():
    lora, qlora, full = _idefics2("lora"), _idefics2("qlora"), _idefics2("full")
    assert qlora.params_gb < 0.4 * lora.params_gb
    assert lora.trainable_params < 0.01 * lora.num_params
    # full.yaml trains the connector and the language model; the vision tower is frozen and, with nothing
    # trainable before it, saves nothing for backward but what activation checkpointing keeps of its layers'
    # inputs (measured: tests/test_real_width.py).
    assert full.trainable_params == IDEFICS2_PART_COUNTS["connector"] + IDEFICS2_PART_COUNTS["language"]
    assert full.parts["stack_modes"]["vision"] == "frozen"
    assert _idefics2("full", "--gradient_checkpointing", "false").parts["activations_by_part_gb"]["vision"] == 0
    trained_vision = _idefics2(
        "full", "--train_modules", "vision", "connector", "language", "--gradient_checkpointing", "false"
    ).parts["activations_by_part_gb"]["vision"]
    assert 0 < full.parts["activations_by_part_gb"]["vision"] < 0.1 * trained_vision
    assert _idefics2("full_fsdp4").total_gb < full.total_gb
    parallel = _idefics2("full_model_parallel", num_gpus=2)
    assert parallel.params_gb < 0.6 * full.params_gb and parallel.total_gb < full.total_gb


def test_families_train_modules_choose_what_trains_in_full():
    connector = _idefics2("full", "--train_modules", "connector")
    assert connector.trainable_params == IDEFICS2_PART_COUNTS["connector"]
    everything = _idefics2("full", "--train_modules", "vision", "connector", "language")
    assert everything.trainable_params == REAL_PARAMETER_COUNTS[IDEFICS2]
    assert connector.activations_gb < _idefics2("full").activations_gb < everything.activations_gb
    # Beside LoRA: the connector trains in full (a trainable copy beside the frozen original), its adapters
    # are dropped, and under 4-bit it is not quantized (fp32 after prepare_model_for_kbit_training).
    lora, qlora = _idefics2("lora"), _idefics2("qlora", "--train_modules", "connector")
    connector_adapters = _idefics2(
        "lora",
        "--lora_target_modules",
        r".*connector.*\.(q_proj|k_proj|v_proj|o_proj|"
        r"gate_proj|up_proj|down_proj)",
    ).trainable_params
    assert qlora.trainable_params == lora.trainable_params - connector_adapters + IDEFICS2_PART_COUNTS["connector"]
    connector_bytes = 2 * 4 * IDEFICS2_PART_COUNTS["connector"]
    assert qlora.parts["params_by_part_gb"]["connector"] == pytest.approx(connector_bytes / GB)


def test_families_llava_default_lora_targets_leave_the_vision_tower_alone():
    result = _recipe_estimate("lora", "--model_name_or_path", LLAVA)
    assert result.num_params == REAL_PARAMETER_COUNTS[LLAVA] and result.trainable_params < 0.01 * result.num_params
    assert result.parts["stack_modes"]["vision"] == "frozen"
    unchecked = _recipe_estimate("lora", "--model_name_or_path", LLAVA, "--gradient_checkpointing", "false")
    assert unchecked.parts["activations_by_part_gb"]["vision"] == 0
    assert result.parts["stack_modes"]["connector"] == result.parts["stack_modes"]["language_model"] == "lora"
    script_args, _, model_args = parse_recipe_args("lora", ["--model_name_or_path", LLAVA])
    plan = training_plan(meta_model(load_config(LLAVA, shipped_first=True)), script_args, model_args)
    assert plan.adapters and not [name for name in plan.adapters if FAMILIES["llava"].part_of(name) == "vision"]


@pytest.mark.parametrize(
    "flags, refusal",
    [(["--gpu_memory", "0"], "--gpu_memory 0.0: give the GPU's memory in GB"), (["--num_gpus", "0"], "--num_gpus 0")],
)
def test_the_estimator_refuses_a_gpu_that_cannot_exist(flags, refusal):
    from estimate import run_estimate  # recipes/estimate.py

    from alt_text_recipes.data.errors import RecipeError

    with pytest.raises(RecipeError, match=refusal):
        run_estimate(["lora", "--config", "recipes/configs/tiny/lora.yaml", "--output_dir", "unused", *flags])
