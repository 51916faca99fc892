"""Predict a recipe's memory per GPU before loading any weights, and say whether it fits.

    python recipes/estimate.py full_ft --config recipes/configs/matrix/bf16_true.yaml --gpu_memory 80
    python recipes/estimate.py qlora --model_name_or_path Salesforce/blip2-flan-t5-xxl --json
    python recipes/estimate.py full_ft --config recipes/configs/matrix/even_larger.yaml --num_gpus 4 --strategy fsdp
    python recipes/estimate.py full_ft --config recipes/configs/idefics2/full_model_parallel.yaml --num_gpus 2
    python recipes/estimate.py full_ft --deepspeed ds_configs/zero3_offload.json --num_gpus 8
    python recipes/estimate.py full_ft --fsdp "full_shard auto_wrap" --num_gpus 4

It takes the recipe's own YAML and flags, so anything a recipe accepts can be estimated. The arithmetic:
"""

import dataclasses
import sys
from dataclasses import dataclass, field

from alt_text_recipes.data.errors import exit_on_user_error, require_setting
from alt_text_recipes.memory.estimator import __doc__ as ARITHMETIC
from alt_text_recipes.memory.estimator import estimate_run
from alt_text_recipes.train.registry import SINGLE_RUN_RECIPES
from alt_text_recipes.train.strategies import STRATEGY_NAMES

__doc__ += ARITHMETIC


@dataclass
class EstimatorArguments:
    gpu_memory: float = field(default=80.0, metadata={"help": "GPU memory in GB to check the estimate against."})
    num_gpus: int | None = field(
        default=None,
        metadata={
            "help": "GPUs the run is spread over (default: the accelerate config's num_processes; with "
            "--device_map the visible GPUs; else 1, which the output then says it assumed)."
        },
    )
    strategy: str | None = field(
        default=None,
        metadata={
            "help": f"{', '.join(STRATEGY_NAMES)} (default: from --deepspeed, --fsdp/--fsdp_config, "
            "--accelerate_config (its DeepSpeed file or FSDP settings), model_parallel with "
            "--device_map, else single). zero1/zero2/zero3: DeepSpeed ZeRO stages; *_offload: "
            "optimizer (and for zero3 params) on the CPU; fsdp_grad_op: SHARD_GRAD_OP.",
            "choices": STRATEGY_NAMES,
        },
    )
    accelerate_config: str | None = field(
        default=None,
        metadata={
            "help": "The accelerate config the run is launched with (its strategy and process count; default: "
            "the preset's `accelerate_config`)."
        },
    )
    device: str = field(
        default="cuda",
        metadata={"help": "cuda (a GPU run) or cpu (a CPU run: the process counts).", "choices": ["cuda", "cpu"]},
    )
    json: bool = field(default=False, metadata={"help": "Print one JSON object instead of the table."})

    def __post_init__(self) -> None:
        require_setting(self.gpu_memory > 0, "gpu_memory", self.gpu_memory, "give the GPU's memory in GB")
        require_setting(self.num_gpus is None or self.num_gpus >= 1, "num_gpus", self.num_gpus, "give at least 1 GPU")


def run_estimate(argv: list[str]):
    if not argv or argv[0] not in SINGLE_RUN_RECIPES:
        sys.exit(
            f"usage: python recipes/estimate.py {{{','.join(SINGLE_RUN_RECIPES)}}} "
            f"[--config preset.yaml] [flags]\n{__doc__}"
        )
    from alt_text_recipes.train.arguments import parse_recipe_args

    script_args, training_args, model_args, options = parse_recipe_args(argv[0], argv[1:], extra=(EstimatorArguments,))
    if options.accelerate_config:  # the flag over what the preset says it is launched with
        script_args.preset = dataclasses.replace(script_args.preset, accelerate_config=options.accelerate_config)
    result = estimate_run(
        script_args,
        training_args,
        model_args,
        gpu_memory_gb=options.gpu_memory,
        num_gpus=options.num_gpus,
        strategy=options.strategy,
        device=options.device,
    )
    print(result.to_json() if options.json else result.table())
    return result


if __name__ == "__main__":
    exit_on_user_error(run_estimate, sys.argv[1:])
