"""Merge a LoRA or QLoRA adapter into its base model: one standalone folder that loads without peft.

    python recipes/merge_adapter.py --adapter_dir outputs/lora --output_dir outputs/lora-merged
    python recipes/merge_adapter.py --adapter_dir outputs/qlora --output_dir outputs/qlora-merged --dtype bfloat16

The base named in the adapter's config (or `--base_model`) is loaded unquantized in `--dtype`, also for
QLoRA adapters, so the merged weights are plain bf16/fp32 weights. The processor is saved beside them, and a
model card (README.md) whose loading code and pipeline call run from any folder.
"""

from dataclasses import dataclass, field
from pathlib import Path

from alt_text_recipes.data.errors import RecipeError, exit_on_user_error, require_folder
from alt_text_recipes.outputs.model_card import write_merged_card
from alt_text_recipes.train.families import family_of
from alt_text_recipes.train.modeling import load_trained
from alt_text_recipes.train.settings_parser import parse_tool_args


@dataclass
class MergeArguments:
    adapter_dir: str = field(metadata={"help": "Folder a LoRA/QLoRA recipe saved (adapter + processor)."})
    output_dir: str = field(metadata={"help": "Where the merged model and its processor are written."})
    base_model: str | None = field(
        default=None, metadata={"help": "Base model folder or id, if not the one named in adapter_config.json."}
    )
    dtype: str = field(
        default="auto", metadata={"help": "dtype of the merged weights: auto (the base's), float32, bfloat16."}
    )

    def __post_init__(self) -> None:
        require_folder("output_dir", self.output_dir)


def merge_adapter(args: MergeArguments) -> Path:
    if not (Path(args.adapter_dir) / "adapter_config.json").exists():
        raise RecipeError(f"{args.adapter_dir} holds no adapter_config.json: it is not a LoRA/QLoRA output folder.")
    # Here, not at the top: importing peft imports bitsandbytes, whose CPU notice the package's log filter (set
    # when alt_text_recipes is imported) drops; imported before the package, the notice would print.
    from peft import PeftModel

    model, processor = load_trained(args.adapter_dir, args.dtype, args.base_model)
    if not isinstance(model, PeftModel):
        raise RecipeError(f"{args.adapter_dir} did not load as an adapter.")
    merged = model.merge_and_unload()
    merged.save_pretrained(args.output_dir)  # safetensors
    processor.save_pretrained(args.output_dir)
    base = args.base_model or model.peft_config[model.active_adapter].base_model_name_or_path
    write_merged_card(args.output_dir, args.adapter_dir, base, family_of(merged).uses_chat_template)
    print(f"merged {args.adapter_dir} into {type(merged).__name__} ({merged.dtype}); saved to {args.output_dir}")
    return Path(args.output_dir)


def main() -> None:
    exit_on_user_error(lambda: merge_adapter(parse_tool_args(MergeArguments)))


if __name__ == "__main__":
    main()
