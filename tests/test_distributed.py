"""Scale-out strategies on CPU: the accelerate configs users launch, with two processes (gloo).

Each test launches the real recipe through the config file in accelerate_configs/, overriding only the
process count and `--use_cpu` (accelerate's own `--cpu --num_processes 2` starts a single process). On a
machine with a GPU the launches hide it (CUDA_VISIBLE_DEVICES=""): these are CPU runs over gloo, and DeepSpeed
would otherwise pick its CUDA accelerator and put both ranks on the one GPU.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from alt_text_recipes.outputs.experiment_matrix import cpu_deepspeed_flags
from alt_text_recipes.train.modeling import load_config, meta_model
from alt_text_recipes.train.parallel import (
    align_query_tokens_for_fsdp,
    describe_device_map,
    plan_device_map,
    scaled_learning_rate,
)

from conftest import (
    CPU_ONLY_ENV,
    REPO_ROOT,
    TINY_MODELS,
    accelerate_launch,
    free_port,
    logged_losses,
    python_for_ranks,
    run_recipe,
    torchrun,
)

TINY_FLAGS = [
    "--config",
    "recipes/configs/tiny/full_ft.yaml",
    "--logging_steps",
    "1",
    "--memory_report_steps",
    "2",
    "--max_train_samples",
    "64",
]


def launch(
    config: str, recipe: str, *args: str, processes: int = 2, launcher_flags: tuple = (), timeout: int = 400
) -> subprocess.CompletedProcess:
    command = accelerate_launch(
        config, f"recipes/{recipe}.py", *args, processes=processes, launcher_flags=launcher_flags
    )
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=CPU_ONLY_ENV)


def _ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_ddp_two_ranks_follow_the_single_process_loss_curve(tmp_path):
    single = tmp_path / "single"
    _ok(
        run_recipe(
            "full_ft",
            *TINY_FLAGS,
            "--per_device_train_batch_size",
            "8",
            "--max_steps",
            "6",
            "--output_dir",
            str(single),
        )
    )
    ddp = tmp_path / "ddp"
    stdout = _ok(
        launch(
            "ddp4.yaml",
            "full_ft",
            *TINY_FLAGS,
            "--per_device_train_batch_size",
            "4",
            "--max_steps",
            "6",
            "--scale_lr",
            "none",
            "--output_dir",
            str(ddp),
        )
    )
    assert "learning rate: 0.001 -> 0.001 (none scaling, 2 processes, global batch 8)" in stdout
    assert stdout.count("[memory] step 1 |") == 1  # rank 0 alone prints the summary...
    assert "peak memory per rank: rank 0" in stdout and "rank 1" in stdout  # ...and every rank's peak
    single_losses, ddp_losses = logged_losses(single), logged_losses(ddp)
    assert len(ddp_losses) == len(single_losses) == 6
    assert ddp_losses == pytest.approx(single_losses, rel=0.03)  # 2 x 4 is the same batch of 8 as 1 x 8
    reloaded = load_file(ddp / "model.safetensors")
    assert any(not torch.equal(reloaded[k], v) for k, v in load_file(TINY_MODELS["opt"] / "model.safetensors").items())


def _resume_matches_uninterrupted(tmp_path, config, recipe, weights_file, *flags, launcher_flags=()):
    """Train 4 steps saving at step 2; resume a second run from that checkpoint; both end equal."""
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    common = [*flags, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2"]
    _ok(launch(config, recipe, *common, "--output_dir", str(full), launcher_flags=launcher_flags))
    checkpoint = full / "checkpoint-2"
    assert checkpoint.is_dir()
    _ok(
        launch(
            config,
            recipe,
            *common,
            "--output_dir",
            str(resumed),
            "--resume_from_checkpoint",
            str(checkpoint),
            launcher_flags=launcher_flags,
        )
    )
    state = json.loads((resumed / "trainer_state.json").read_text())
    # The history of steps 1-2 comes from the checkpoint; steps 3-4 were trained after resuming.
    assert state["global_step"] == 4 and [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4]
    assert logged_losses(resumed) == pytest.approx(logged_losses(full), rel=1e-3)
    ours, theirs = load_file(resumed / weights_file), load_file(full / weights_file)
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key].float(), theirs[key].float(), rtol=1e-3, atol=1e-4)
    return ours


def test_lora_ddp_checkpoint_resumes_with_its_adapters(tmp_path):
    adapter = _resume_matches_uninterrupted(
        tmp_path,
        "ddp4.yaml",
        "lora",
        "adapter_model.safetensors",
        "--config",
        "recipes/configs/tiny/lora.yaml",
        "--per_device_train_batch_size",
        "4",
        "--logging_steps",
        "1",
        "--max_train_samples",
        "64",
    )
    assert any("lora_B" in key and tensor.abs().sum() > 0 for key, tensor in adapter.items())


def test_deepspeed_zero2_offload_two_ranks_trains_saves_and_resumes(tmp_path):
    # The shipped JSON as it is, but for the all-gather bucket (see cpu_deepspeed_flags).
    flags = cpu_deepspeed_flags("accelerate_configs/ds_zero2_offload.yaml", tmp_path / "deepspeed")
    assert flags
    _resume_matches_uninterrupted(
        tmp_path,
        "ds_zero2_offload.yaml",
        "full_ft",
        "model.safetensors",
        *TINY_FLAGS,
        "--per_device_train_batch_size",
        "4",
        launcher_flags=tuple(flags),
    )


def test_two_machines_on_localhost_form_one_world(tmp_path):
    port = str(free_port())
    processes = []
    for rank in (0, 1):
        flags = (
            "--num_machines",
            "2",
            "--machine_rank",
            str(rank),
            "--main_process_ip",
            "127.0.0.1",
            "--main_process_port",
            port,
        )
        command = [
            python_for_ranks(),
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            "accelerate_configs/fsdp_2x4.yaml",
            "--num_processes",
            "2",
            "--multi_gpu",
            *flags,
            "recipes/lora.py",
            "--config",
            "recipes/configs/tiny/lora.yaml",
            "--per_device_train_batch_size",
            "4",
            "--max_steps",
            "3",
            "--logging_steps",
            "1",
            "--max_train_samples",
            "32",
            "--use_cpu",
            "true",
            "--output_dir",
            str(tmp_path / f"machine{rank}"),
        ]
        processes.append(
            subprocess.Popen(
                command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=CPU_ONLY_ENV
            )
        )
    outputs = [process.communicate(timeout=400)[0] for process in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
    assert "2 processes, global batch 8" in outputs[0]  # one world of two ranks across the two launchers
    assert (tmp_path / "machine0" / "adapter_model.safetensors").exists()


def test_two_stage_recipe_runs_both_stages_on_two_ranks(tmp_path):
    """Stage 2 on every rank loads what the first rank saved in stage 1: the ranks wait for it."""
    command = [
        python_for_ranks(),
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        "accelerate_configs/ddp4.yaml",
        "--num_processes",
        "2",
        "--multi_gpu",
        "recipes/two_stage.py",
        "--config",
        "recipes/configs/tiny/two_stage.yaml",
        "--use_cpu",
        "true",
        "--per_device_train_batch_size",
        "4",
        "--stage1_max_steps",
        "3",
        "--max_steps",
        "3",
        "--max_train_samples",
        "32",
        "--output_dir",
        str(tmp_path),
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=400, env=CPU_ONLY_ENV)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("stage 2 of 2") == 1 and "2 processes, global batch 8" in result.stdout
    assert (tmp_path / "stage1" / "model.safetensors").exists()
    assert (tmp_path / "stage2" / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_fsdp2_shards_the_configured_layers_with_mixed_dtypes_and_gathers_a_reloadable_state_dict(tmp_path, lora):
    out = tmp_path / "fsdp.json"
    command = torchrun("tests/fsdp2_worker.py", str(out), *(["--lora"] if lora else []))
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    rank0 = json.loads(out.read_text())
    rank1 = json.loads(out.with_name(out.name + ".rank1").read_text())
    # Every class named in fsdp4.yaml that the model has became a unit: 2 ViT + 2 Q-Former + 2 OPT layers + Q-Former.
    assert rank0["wrapped"] == 7
    assert rank0["dtypes"] == ["torch.bfloat16", "torch.float32"]  # fp32 Q-Former beside bf16 layers
    for rank in (rank0, rank1):
        assert 0.45 < rank["local_params"] / rank["total_params"] < 0.55  # each rank holds about half
    assert rank0["losses"][-1] < rank0["losses"][0]
    if lora:
        assert rank0["adapter_reloads"] and rank0["adapter_trained"] and rank0["adapter_tensors"] == 8
    else:
        assert rank0["reloaded_equal"] and not rank0["missing"] and rank0["changed_by_training"]


def test_model_parallel_plan_keeps_layers_whole_and_balances_them():
    model = meta_model(load_config("Salesforce/blip2-opt-2.7b", shipped_first=True))
    plan = plan_device_map(model, num_gpus=4, gpu_memory_gb=20, dtype="bfloat16")
    assert set(plan.values()) == {0, 1, 2, 3}
    layer_prefixes = ("vision_model.encoder.layers.", "qformer.encoder.layer.", "language_model.model.decoder.layers.")
    for module in plan:
        for prefix in layer_prefixes:  # a transformer layer is placed whole, never split
            if module.startswith(prefix):
                assert module[len(prefix) :].isdigit(), module

    def numel(name: str) -> int:  # a plan entry is a module, or a bare parameter such as query_tokens
        try:
            return sum(p.numel() for p in model.get_submodule(name).parameters())
        except AttributeError:
            return model.get_parameter(name).numel()

    bytes_per_device = {}
    for module, device in plan.items():
        bytes_per_device[device] = bytes_per_device.get(device, 0) + 2 * numel(module)
    assert max(bytes_per_device.values()) < 2 * min(bytes_per_device.values())  # balanced
    assert "0:" in describe_device_map(plan) and "3:" in describe_device_map(plan)


def test_device_map_option_loads_with_the_map_and_rejects_bad_ones():
    from trl import ModelConfig

    from alt_text_recipes.data.errors import RecipeError
    from alt_text_recipes.train.modeling import load_model
    from alt_text_recipes.train.parallel import parse_device_map

    assert parse_device_map("balanced") == "balanced"
    model = load_model(ModelConfig(model_name_or_path=str(TINY_MODELS["opt"])), parse_device_map('{"": "cpu"}'))
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    with pytest.raises(RecipeError, match="--device_map must be one of"):
        parse_device_map("{not json")


def test_learning_rate_scaling_rules():
    assert scaled_learning_rate(1e-5, 4, "linear") == pytest.approx(4e-5)
    assert scaled_learning_rate(1e-5, 4, "sqrt") == pytest.approx(2e-5)
    assert scaled_learning_rate(1e-5, 4, "none") == 1e-5


def test_query_tokens_follow_the_embeddings_dtype_under_fsdp():
    from alt_text_recipes.train.modeling import load_trained

    model, _ = load_trained(TINY_MODELS["opt"])
    model.to(torch.bfloat16)
    model.query_tokens.data = model.query_tokens.data.float()
    align_query_tokens_for_fsdp(model)
    assert model.query_tokens.dtype == torch.bfloat16
