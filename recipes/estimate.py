"""Predict a recipe's memory per GPU before loading any weights, and say whether it fits.

    python recipes/estimate.py full_ft --config recipes/configs/matrix/bf16_true.yaml --gpu_memory 80
    python recipes/estimate.py qlora --model_name_or_path Salesforce/blip2-flan-t5-xxl --json
    python recipes/estimate.py full_ft --config recipes/configs/matrix/even_larger.yaml --num_gpus 4 --strategy fsdp
    python recipes/estimate.py full_ft --config recipes/configs/idefics2/full_model_parallel.yaml --num_gpus 2
    python recipes/estimate.py full_ft --deepspeed ds_configs/zero3_offload.json --num_gpus 8
    python recipes/estimate.py full_ft --fsdp "full_shard auto_wrap" --num_gpus 4

It takes the recipe's own YAML and flags, so anything a recipe accepts can be estimated (`--help` lists them).
More than one GPU needs a strategy that spreads the run (`--strategy`, `--deepspeed`, `--fsdp`, an accelerate
config, `--device_map`); `--num_gpus N` with none is refused rather than estimated as one process. An estimate
that does not fit is followed by the next techniques to try, each with its own estimate (as a run that runs out
of memory says). The arithmetic:
"""

import dataclasses
import json
import sys
from dataclasses import dataclass, field

from alt_text_recipes.data.errors import exit_on_user_error, require_setting
from alt_text_recipes.memory.estimator import __doc__ as ARITHMETIC
from alt_text_recipes.memory.estimator import caption_token_count, estimate
from alt_text_recipes.memory.oom_advice import TRY, predicted_techniques, technique_lines
from alt_text_recipes.train.registry import SINGLE_RUN_RECIPES
from alt_text_recipes.train.strategies import STRATEGY_NAMES

__doc__ += ARITHMETIC
USAGE = f"usage: python recipes/estimate.py {{{','.join(SINGLE_RUN_RECIPES)}}} [--config preset.yaml] [flags]"


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
    if argv[:1] in (["-h"], ["--help"]):
        print_help()
        return None
    if not argv or argv[0] not in SINGLE_RUN_RECIPES:
        sys.exit(f"{USAGE}\n{__doc__}")
    from alt_text_recipes.train.arguments import parse_recipe_args

    script_args, training_args, model_args, options = parse_recipe_args(argv[0], argv[1:], extra=(EstimatorArguments,))
    if options.accelerate_config:  # the flag over what the preset says it is launched with
        script_args.preset = dataclasses.replace(script_args.preset, accelerate_config=options.accelerate_config)
    settings = {
        "gpu_memory_gb": options.gpu_memory,
        "num_gpus": options.num_gpus,
        "strategy": options.strategy,
        "device": options.device,
    }
    caption_tokens = caption_token_count(script_args, model_args, training_args.seed)
    result = estimate(script_args, training_args, model_args, caption_tokens, **settings)
    # What to try next when it does not fit: the advice a run that runs out of memory ends with.
    to_try = (
        [] if result.fits else predicted_techniques(script_args, training_args, model_args, caption_tokens, **settings)
    )
    if options.json:
        suggestions = [{"flags": flags, **_figures(predicted)} for flags, predicted in to_try]
        print(json.dumps({**result.as_dict(), "next_techniques": suggestions}, indent=2))
        return result
    print(result.table())
    if to_try:
        print("\n".join([f"  {TRY}", *("  " + line for line in technique_lines(to_try))]))
    return result


def _figures(predicted) -> dict:
    """A technique's predicted total and verdict (None where no estimate could be made)."""
    return {"total_gb": predicted and predicted.total_gb, "fits": predicted and predicted.fits}


def print_help() -> None:
    """Usage, what the estimator does, and every flag (those of any recipe and the estimator's own)."""
    from alt_text_recipes.train.arguments import make_parser

    print(f"{USAGE}\n{__doc__}\nFlags (`python recipes/estimate.py <recipe> --help`: with that recipe's defaults):\n")
    make_parser(None, extra=(EstimatorArguments,)).print_help()


if __name__ == "__main__":
    exit_on_user_error(run_estimate, sys.argv[1:])
