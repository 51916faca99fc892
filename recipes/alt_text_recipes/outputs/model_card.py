"""The model card written beside every trained model (README.md), and pushed with it to the Hub."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub import ModelCard, ModelCardData

from alt_text_recipes.data.layouts import is_hub_id
from alt_text_recipes.data.paths import is_local
from alt_text_recipes.train.families import trained_parts

if TYPE_CHECKING:  # hints only: the card is written from a run's settings, it never parses them
    from transformers import TrainingArguments
    from trl import ModelConfig

    from alt_text_recipes.train.arguments import ScriptArguments

TECHNIQUES = {
    "full_ft": "full fine-tuning (every weight trained)",
    "lora": "LoRA (low-rank adapters on a frozen base)",
    "qlora": "QLoRA (LoRA adapters on a frozen 4-bit NF4 base)",
}


@dataclass
class RunSummary:
    """What a card says about a run beyond the Trainer's own arguments; filled in as the run goes."""

    base_model: str
    dataset: str
    recipe: str | None
    is_adapter: bool
    generation: dict = field(default_factory=dict)
    hyperparameters: dict = field(default_factory=dict)
    peak_memory: str | None = None
    train_seconds: float | None = None


def run_summary(script_args: ScriptArguments, training_args: TrainingArguments, model_args: ModelConfig) -> RunSummary:
    """The model card's account of the run: the settings that decide what was learnt and what it cost."""
    hyperparameters = {
        "learning rate": training_args.learning_rate,
        "batch size per device": training_args.per_device_train_batch_size,
        "gradient accumulation": training_args.gradient_accumulation_steps,
        "processes": training_args.world_size,
        "epochs" if training_args.max_steps <= 0 else "steps": training_args.num_train_epochs
        if training_args.max_steps <= 0
        else training_args.max_steps,
        "optimizer": training_args.optim,
        "scheduler": training_args.lr_scheduler_type,
        "weights dtype": model_args.dtype,
        "mixed precision": "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "no",
        "activation checkpointing": training_args.gradient_checkpointing,
        "seed": training_args.seed,
        "parts trained in full": ", ".join(trained_parts(script_args.train_modules, model_args.use_peft)) or "none",
    }
    if model_args.use_peft:
        hyperparameters.update(
            {
                "LoRA r": model_args.lora_r,
                "LoRA alpha": model_args.lora_alpha,
                "LoRA dropout": model_args.lora_dropout,
                "LoRA targets": model_args.lora_target_modules or "default for the language model",
            }
        )
    if model_args.load_in_4bit or model_args.load_in_8bit:
        hyperparameters["quantization"] = (
            "4-bit " + model_args.bnb_4bit_quant_type if model_args.load_in_4bit else "8-bit"
        )
    return RunSummary(
        base_model=model_args.model_name_or_path,
        dataset=script_args.data_source(),
        recipe=script_args.recipe,
        is_adapter=bool(model_args.use_peft),
        generation={"max_new_tokens": script_args.generation_max_new_tokens, "num_beams": script_args.num_beams},
        hyperparameters=hyperparameters,
    )


def _latest_eval_metrics(log_history: list[dict]) -> dict[str, float]:
    evaluations = [entry for entry in log_history if any(key.startswith("eval_") for key in entry)]
    if not evaluations:
        return {}
    skip = ("_runtime", "_per_second", "_steps_per_second")
    return {
        key[len("eval_") :]: value
        for key, value in evaluations[-1].items()
        if key.startswith("eval_") and not key.endswith(skip)
    }


def _how_to_load(summary: RunSummary, repo_id: str) -> str:
    if summary.is_adapter:
        return (
            "```python\nfrom peft import PeftModel\n"
            "from transformers import AutoModelForImageTextToText, AutoProcessor\n\n"
            f'processor = AutoProcessor.from_pretrained("{repo_id}")\n'
            f'base = AutoModelForImageTextToText.from_pretrained("{summary.base_model}")\n'
            f'model = PeftModel.from_pretrained(base, "{repo_id}")\n```\n'
            "`recipes/merge_adapter.py` merges the adapter into a standalone model folder."
        )
    return (
        "```python\nfrom transformers import AutoModelForImageTextToText, AutoProcessor\n\n"
        f'processor = AutoProcessor.from_pretrained("{repo_id}")\n'
        f'model = AutoModelForImageTextToText.from_pretrained("{repo_id}")\n```'
    )


def model_card_text(summary: RunSummary, repo_id: str, log_history: list[dict], best: str | None = None) -> str:
    """The card: metadata header, what was trained how, results, and how to load it."""
    metadata = ModelCardData(
        base_model=None if is_local(summary.base_model) else summary.base_model,
        datasets=[summary.dataset] if is_hub_id(summary.dataset) else None,
        library_name="peft" if summary.is_adapter else "transformers",
        pipeline_tag="image-to-text",
        tags=["alt-text", "image-captioning", "accessibility", *([summary.recipe] if summary.recipe else [])],
    )
    technique = TECHNIQUES.get(summary.recipe or "", summary.recipe or "fine-tuning")
    lines = [
        f"---\n{metadata.to_yaml()}\n---",
        f"# {repo_id.split('/')[-1]}\n",
        f"An alt-text writer: `{summary.base_model}` fine-tuned on `{summary.dataset}` with {technique}.",
        "It writes the short description a screen reader speaks for an image.\n",
        "## How to load\n",
        _how_to_load(summary, repo_id),
        "",
        "## Training\n",
        "| setting | value |",
        "| --- | --- |",
        *(f"| {name} | {getattr(value, 'value', value)} |" for name, value in summary.hyperparameters.items()),
        "",
    ]
    metrics = _latest_eval_metrics(log_history)
    lines += ["## Results\n"]
    if metrics:
        lines += [
            "Last evaluation on the validation split, captions generated "
            f"({', '.join(f'{k}={v}' for k, v in summary.generation.items())}):\n",
            "| metric | value |",
            "| --- | --- |",
            *(f"| {k} | {v:.4g} |" for k, v in metrics.items()),
            "",
        ]
    else:
        lines += ["No evaluation was run (`--eval_strategy no`).\n"]
    if best:
        lines += [f"Weights saved: {best}.\n"]
    if summary.peak_memory:
        lines += [f"Peak memory while training: {summary.peak_memory}."]
    if summary.train_seconds is not None:
        lines += [f"Training time: {summary.train_seconds:.0f} s."]
    return "\n".join(lines) + "\n"


def write_model_card(
    folder: str | Path, summary: RunSummary, repo_id: str, log_history: list[dict], best: str | None = None
) -> Path:
    path = Path(folder) / "README.md"
    ModelCard(model_card_text(summary, repo_id, log_history, best)).save(path)
    return path
