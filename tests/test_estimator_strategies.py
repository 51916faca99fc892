"""Every way a run names its distributed strategy is estimated as that strategy divides memory; Idefics3 is
estimated; a shipped model id is estimated without touching the network."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import yaml

from alt_text_recipes.data.errors import RecipeError
from alt_text_recipes.memory.estimator import (
    GB,
    estimate,
    image_processor_settings,
    layer_stacks,
    trainer_hidden_size,
)
from alt_text_recipes.train.arguments import parse_recipe_args
from alt_text_recipes.train.modeling import load_config, meta_model
from alt_text_recipes.train.strategies import (
    STRATEGY_NAMES,
    Strategy,
    accelerate_strategy,
    deepspeed_strategy,
    strategy_from_name,
)

from conftest import REPO_ROOT

OPT = "Salesforce/blip2-opt-2.7b"
OPT_PARAMS = 3_744_679_936
OPT_HIDDEN = 2560  # the OPT text config's: what the Trainer fills DeepSpeed's "auto" buckets from
IDEFICS3 = "HuggingFaceM4/Idefics3-8B-Llama3"


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    """Presets name ds_configs/ and accelerate_configs/ relative to the repository, as users run them; a
    ZeRO-3 --deepspeed registers itself globally in transformers while its TrainingArguments live."""
    monkeypatch.chdir(REPO_ROOT)
    yield
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def _preset(tmp_path, base: str, drop=(), **changes) -> str:
    """A copy of a shipped preset with some settings dropped or changed."""
    settings = yaml.safe_load((REPO_ROOT / base).read_text())
    for key in drop:
        settings.pop(key)
    settings.update(changes)
    path = tmp_path / "preset.yaml"
    path.write_text(yaml.safe_dump(settings))
    return str(path)


def _estimate(preset: str, *flags: str, recipe: str = "full_ft", **options):
    script_args, training_args, model_args = parse_recipe_args(recipe, ["--config", preset, *flags])
    return estimate(script_args, training_args, model_args, 20, **options)


def _figures(result) -> tuple:
    return (
        result.strategy,
        result.num_gpus,
        result.params_gb,
        result.grads_gb,
        result.optimizer_gb,
        result.activations_gb,
        result.host_gb,
        result.total_gb,
    )


# --- DeepSpeed ----------------------------------------------------------------------------------------------


def test_deepspeed_flag_estimates_as_the_accelerate_config_naming_the_same_file(tmp_path):
    via_accelerate = _estimate("recipes/configs/matrix/cpu_offload.yaml")
    flagged = _preset(
        tmp_path,
        "recipes/configs/matrix/cpu_offload.yaml",
        drop=["accelerate_config"],
        deepspeed="ds_configs/zero2_offload.json",
    )
    via_flag = _estimate(flagged)
    assert _figures(via_flag) == _figures(via_accelerate)
    assert via_flag.strategy == "zero2_offload" and via_flag.optimizer_gb == 0
    assert via_flag.strategy_detail.startswith(
        "deepspeed ZeRO-2, optimizer offloaded to CPU (from --deepspeed ds_configs/zero2_offload.json)"
    )
    assert "1 GPU assumed" in via_flag.strategy_detail  # neither --num_gpus nor an accelerate config
    assert (
        "accelerate_configs/ds_zero2_offload.yaml -> ds_configs/zero2_offload.json" in via_accelerate.strategy_detail
    )
    assert "GPU assumed" not in via_accelerate.strategy_detail  # num_processes: 1
    # On the GPU: the bf16 params and two reduce buckets of hidden² ("auto"); the host: fp32 master weights,
    # moments and gradients (16 B/param) and, with gradient accumulation, a bf16 gradient buffer.
    n, hidden = 12_098_000_384, trainer_hidden_size(load_config("Salesforce/blip2-flan-t5-xxl", shipped_first=True))
    assert via_flag.grads_gb == pytest.approx(2 * hidden**2 * 2 / GB)
    assert via_flag.host_gb == pytest.approx((16 + 2) * n / GB)
    assert json.loads(via_flag.to_json())["strategy_detail"] == via_flag.strategy_detail
    assert "strategy: deepspeed ZeRO-2" in via_flag.table()


def test_zero_stages_divide_what_deepspeed_partitions():
    preset = "recipes/configs/matrix/bf16_true.yaml"
    single = _estimate(preset)
    zero1, zero2, zero3 = (_estimate(preset, strategy=name, num_gpus=4) for name in ("zero1", "zero2", "zero3"))
    n, bucket = OPT_PARAMS, OPT_HIDDEN**2  # reduce_bucket_size "auto" = hidden²; overlap_comm: two buckets
    # Stage 1 and 2: bf16 params whole; fp32 master weights + AdamW moments (12 B/param) divided by 4 GPUs.
    for zero in (zero1, zero2):
        assert zero.params_gb == pytest.approx(single.params_gb) == pytest.approx(2 * n / GB, rel=1e-3)
        assert zero.optimizer_gb == pytest.approx(12 * n / 4 / GB)
        assert zero.activations_gb == single.activations_gb
    # Gradients: stage 1 keeps the full bf16 gradients (its buckets are fp32), stage 2 a quarter of them;
    # both the fp32 gradients of their quarter at the step.
    assert zero1.grads_gb == pytest.approx((2 * n + 4 * n / 4 + 2 * bucket * 4) / GB)
    assert zero2.grads_gb == pytest.approx((2 * n / 4 + 4 * n / 4 + 2 * bucket * 2) / GB)
    # Stage 3 divides the parameters too (bar small persistent ones), plus what it gathers.
    assert zero3.optimizer_gb == zero2.optimizer_gb and zero3.grads_gb == zero2.grads_gb
    assert zero3.params_gb < 0.35 * single.params_gb
    assert _estimate(preset, strategy="zero3", num_gpus=8).params_gb < zero3.params_gb
    # bf16 AdamW alone keeps bf16 moments (8 B/param in all); ZeRO keeps fp32 ones beside fp32 master weights,
    # so stage 1 on 4 GPUs saves nothing over one GPU; stage 2 and 3 do.
    assert zero1.total_gb > single.total_gb > zero2.total_gb > zero3.total_gb
    assert (zero1.strategy, zero2.strategy, zero3.strategy, zero3.num_gpus) == ("zero1", "zero2", "zero3", 4)


def test_deepspeed_files_equal_the_named_strategies_they_configure():
    preset = "recipes/configs/matrix/bf16_true.yaml"
    for file, name in (("zero2.json", "zero2"), ("zero3_offload.json", "zero3_offload")):
        from_file = _estimate(preset, "--deepspeed", f"ds_configs/{file}", num_gpus=4)
        named = _estimate(preset, strategy=name, num_gpus=4)
        assert _figures(from_file) == _figures(named), file
        assert f"(from --deepspeed ds_configs/{file})" in from_file.strategy_detail
    offload = _estimate(preset, "--deepspeed", "ds_configs/zero3_offload.json", num_gpus=4)
    # Params and optimizer on the host: the GPU keeps what it gathers and two reduce buckets.
    assert offload.strategy == "zero3_offload" and offload.optimizer_gb == 0
    assert offload.params_gb < 0.1 * _estimate(preset).params_gb
    assert offload.grads_gb == pytest.approx(2 * OPT_HIDDEN**2 * 2 / GB)
    assert (
        offload.host_gb > 19.9 * OPT_PARAMS / GB
    )  # master + moments 12, fp32 grads 4, bf16 buffer 2, bf16 params 2 (B/param)


def test_deepspeed_auto_values_resolve_as_the_trainer_resolves_them(tmp_path):
    shipped = deepspeed_strategy("ds_configs/zero3_offload.json", "test").resolved(4096, bf16=True, fp16=False)
    assert (shipped.reduce_bucket_size, shipped.prefetch_bucket_size, shipped.persistence_threshold) == (
        4096**2,
        int(0.9 * 4096**2),
        10 * 4096,
    )
    assert shipped.precision == "bf16" and shipped.overlap_comm
    explicit = tmp_path / "ds.json"
    explicit.write_text(
        json.dumps(
            {
                "bf16": {"enabled": False},
                "zero_optimization": {"stage": 1, "reduce_bucket_size": 5e7, "offload_optimizer": {"device": "none"}},
            }
        )
    )
    resolved = deepspeed_strategy(str(explicit), "test").resolved(4096, bf16=True, fp16=False)
    assert (resolved.name, resolved.reduce_bucket_size, resolved.precision, resolved.overlap_comm) == (
        "zero1",
        50_000_000,
        None,
        False,
    )  # DeepSpeed overlaps communication by default only in stage 3
    # bf16.enabled "auto" follows --bf16: DeepSpeed then holds every parameter in bf16, whatever --dtype loaded.
    fp32_load = ["--dtype", "float32", "--deepspeed", "ds_configs/zero2.json"]
    assert _estimate("recipes/configs/matrix/bf16_true.yaml", *fp32_load).params_gb == pytest.approx(
        2 * OPT_PARAMS / GB, rel=1e-3
    )
    assert _estimate(
        "recipes/configs/matrix/bf16_true.yaml", *fp32_load, "--bf16", "false"
    ).params_gb == pytest.approx(4 * OPT_PARAMS / GB, rel=1e-3)


def test_accelerate_inline_deepspeed_keys_use_deepspeeds_defaults(tmp_path):
    config = yaml.safe_load((REPO_ROOT / "accelerate_configs/ds_zero2_offload.yaml").read_text())
    config["deepspeed_config"] = {"zero_stage": 3, "offload_optimizer_device": "cpu", "offload_param_device": "cpu"}
    config["num_processes"] = 8
    path = tmp_path / "zero3_inline.yaml"
    path.write_text(yaml.safe_dump(config))
    assert accelerate_strategy(str(path)).name == "zero3_offload"
    result = _estimate(_preset(tmp_path, "recipes/configs/matrix/bf16_true.yaml", accelerate_config=str(path)))
    assert (result.strategy, result.num_gpus) == ("zero3_offload", 8)
    assert result.grads_gb == pytest.approx(2 * 500_000_000 * 2 / GB)  # two default 5e8-element buckets


# --- FSDP ---------------------------------------------------------------------------------------------------


def test_fsdp_flag_equals_the_fsdp_accelerate_config(tmp_path):
    via_accelerate = _estimate("recipes/configs/multi_gpu/fsdp4_bf16.yaml")
    no_launcher = _preset(tmp_path, "recipes/configs/multi_gpu/fsdp4_bf16.yaml", drop=["accelerate_config"])
    via_flag = _estimate(no_launcher, "--fsdp", "full_shard auto_wrap", num_gpus=4)
    assert _figures(via_flag) == _figures(via_accelerate)
    assert (via_flag.strategy, via_flag.num_gpus) == ("fsdp", 4)
    assert via_flag.strategy_detail == "FSDP FULL_SHARD (from --fsdp/--fsdp_config)"
    assert via_accelerate.strategy_detail == "FSDP FULL_SHARD (from accelerate_config accelerate_configs/fsdp4.yaml)"
    assumed = _estimate(no_launcher, "--fsdp", "full_shard auto_wrap")
    assert assumed.num_gpus == 1 and "1 GPU assumed (pass --num_gpus N)" in assumed.strategy_detail


def test_fsdp_variants_keep_what_they_do_not_shard(tmp_path):
    preset = _preset(tmp_path, "recipes/configs/multi_gpu/fsdp4_bf16.yaml", drop=["accelerate_config"])
    single, full = _estimate(preset), _estimate(preset, "--fsdp", "full_shard", num_gpus=4)
    grad_op = _estimate(preset, "--fsdp", "shard_grad_op auto_wrap", num_gpus=4)
    assert grad_op.strategy == "fsdp_grad_op" and grad_op.params_gb == single.params_gb
    assert grad_op.optimizer_gb == pytest.approx(single.optimizer_gb / 4) == pytest.approx(full.optimizer_gb)
    offload = _estimate(preset, "--fsdp", "full_shard offload auto_wrap", num_gpus=4)
    assert offload.strategy == "fsdp_offload" and offload.optimizer_gb == offload.grads_gb == 0
    assert offload.params_gb < full.params_gb
    assert offload.host_gb == pytest.approx(single.params_gb + single.grads_gb + single.optimizer_gb)
    # FSDP1's NO_SHARD from an accelerate config is data parallel.
    config = yaml.safe_load((REPO_ROOT / "accelerate_configs/fsdp4.yaml").read_text())
    config["fsdp_config"].update(fsdp_version=1, fsdp_sharding_strategy="NO_SHARD")
    config["fsdp_config"].pop("fsdp_reshard_after_forward")
    no_shard = tmp_path / "no_shard.yaml"
    no_shard.write_text(yaml.safe_dump(config))
    ddp = _estimate(_preset(tmp_path, "recipes/configs/multi_gpu/fsdp4_bf16.yaml", accelerate_config=str(no_shard)))
    assert (ddp.strategy, ddp.num_gpus) == ("ddp", 4) and ddp.grads_gb == pytest.approx(2 * single.grads_gb)


def test_every_strategy_name_round_trips_and_the_cli_offers_them():
    for name in STRATEGY_NAMES:
        assert strategy_from_name(name).name == name
    assert strategy_from_name("zero2_offload") == Strategy(
        kind="deepspeed", zero_stage=2, offload_optimizer=True, overlap_comm=True, source="--strategy zero2_offload"
    )
    with pytest.raises(RecipeError):
        strategy_from_name("zero4")
    from estimate import EstimatorArguments

    assert EstimatorArguments.__dataclass_fields__["strategy"].metadata["choices"] == STRATEGY_NAMES


# --- Idefics3 -----------------------------------------------------------------------------------------------


def test_idefics3_stacks_follow_its_processor():
    config = load_config(IDEFICS3, shipped_first=True)
    processor = image_processor_settings(IDEFICS3)
    assert processor["do_image_splitting"] and processor["size"]["longest_edge"] == 1456
    stacks, seq = layer_stacks(config, 20, 30, processor)
    vision, connector, language = stacks
    # 1456 px cut into 4 x 4 tiles of 364 px, plus the whole image: 17 sub-images of 26² patches, 169 tokens each
    # after the 2x2 pixel shuffle; two tags per sub-image and a newline per row of tiles.
    assert (vision.per_example, vision.seq, vision.hidden, vision.layers) == (17, 676, 1152, 27)
    assert (connector.per_example, connector.seq, connector.hidden) == (17, 169, 4 * 1152)
    assert seq == language.seq == 17 * 169 + 2 * 17 + 4 + 30 + 20
    unsplit, unsplit_seq = layer_stacks(config, 20, 30, {})
    assert unsplit[0].per_example == 1 and unsplit_seq == 169 + 2 + 30 + 20
    module = meta_model(config)
    assert module.get_submodule(connector.modules).proj.in_features == connector.hidden


def test_idefics3_is_estimated_and_out_of_memory_advice_predicts():
    from alt_text_recipes.memory.oom_advice import out_of_memory_advice

    script_args, training_args, model_args = parse_recipe_args("lora", ["--model_name_or_path", IDEFICS3])
    lora = estimate(script_args, training_args, model_args, 20)
    assert lora.num_params == 8_462_086_384 and 0 < lora.trainable_params < 0.01 * lora.num_params
    assert lora.parts["stack_modes"] == {"vision": "frozen", "connector": "frozen", "language_model": "lora"}
    assert lora.activations_gb > 0 and lora.fits
    advice = out_of_memory_advice(script_args, training_args, model_args, 20)
    assert "Estimated for these settings" in advice and "estimator" not in advice.lower()


def test_out_of_memory_advice_without_an_estimate_still_lists_the_techniques(monkeypatch):
    from alt_text_recipes.memory import oom_advice as resources

    def no_estimate(*args, **kwargs):
        raise RecipeError("the memory estimator has no layer arithmetic for 'x' models yet (it knows blip-2).")

    monkeypatch.setattr(resources, "estimate", no_estimate)
    script_args, training_args, model_args = parse_recipe_args("full_ft", [])
    lines = resources.out_of_memory_advice(script_args, training_args, model_args, 20).splitlines()
    techniques = [flags for flags, _, _ in resources.next_techniques(training_args, model_args)]
    assert len(techniques) >= 3
    assert [line for line in lines if "estimate" in line.lower() and "recipes/estimate.py" not in line] == [lines[1]]
    assert lines[1].startswith("No memory estimate can be made")
    assert lines[2 : 2 + len(techniques)] == [f"  {flags}" for flags in techniques]


# --- Offline ------------------------------------------------------------------------------------------------


def test_shipped_model_is_estimated_without_any_network_attempt():
    """A listener on loopback stands in for the Hub: the estimate must finish without connecting to it."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    }
    with socket.socket() as hub:
        hub.bind(("127.0.0.1", 0))
        hub.listen(8)
        hub.settimeout(0)
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{hub.getsockname()[1]}"
        result = subprocess.run(  # a cold interpreter: huggingface_hub reads these settings when it is imported
            [sys.executable, str(REPO_ROOT / "recipes/estimate.py"), "full_ft", "--model_name_or_path", OPT, "--json"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        try:
            hub.accept()
            connected = True
        except BlockingIOError:
            connected = False
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert not connected, "the estimate tried to reach the Hub"
    assert "Retry" not in output
    assert json.loads(result.stdout[result.stdout.index("{") :])["num_params"] == OPT_PARAMS
