"""The model card written beside every trained model (README.md), and pushed with it to the Hub."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub import ModelCard, ModelCardData

from alt_text_recipes.data.layouts import is_hub_id
from alt_text_recipes.data.paths import is_local, portable_name
from alt_text_recipes.train.families import DEFAULT_INSTRUCTION, trained_parts

if TYPE_CHECKING:  # hints only: the card is written from a run's settings, it never parses them
    from transformers import TrainingArguments
    from trl import ModelConfig

    from alt_text_recipes.train.arguments import ScriptArguments

# The transformers pipeline these models run in (its "image-to-text" task is gone from transformers 5).
PIPELINE_TAG = "image-text-to-text"
TAGS = ["alt-text", "image-captioning", "accessibility"]
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
    prompt: str = ""  # what alt text is generated after (BLIP-2), or the instruction (chat families)
    chat: bool = False  # a chat family (Idefics, LLaVA): the pipeline takes the image and prompt as a user turn


def run_summary(
    script_args: ScriptArguments, training_args: TrainingArguments, model_args: ModelConfig, chat: bool = False
) -> RunSummary:
    """The model card's account of the run: the settings that decide what was learnt and what it cost.
    `chat`: the model is of a chat family."""
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
        prompt=script_args.prompt,
        chat=chat,
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


def how_to_load(
    model_path: str, base_model: str | None, chat: bool, prompt: str = "", max_new_tokens: int = 40
) -> str:
    """Two Python blocks that run as they are, from any folder: load the model at `model_path` (`base_model`:
    the base an adapter goes on; None for a full model), and write alt text for photo.jpg with the
    image-text-to-text pipeline (chat families take the image and instruction as a user turn)."""
    path_line = f'model_path = "{model_path}"  # this folder, or its Hub id once uploaded'
    if base_model is None:
        load = [
            "from transformers import AutoModelForImageTextToText, AutoProcessor\n",
            path_line,
            "processor = AutoProcessor.from_pretrained(model_path)",
            "model = AutoModelForImageTextToText.from_pretrained(model_path)",
        ]
    else:
        load = [
            "from peft import PeftModel",
            "from transformers import AutoModelForImageTextToText, AutoProcessor\n",
            path_line,
            "processor = AutoProcessor.from_pretrained(model_path)",
            f'base = AutoModelForImageTextToText.from_pretrained("{base_model}")',
            "model = PeftModel.from_pretrained(base, model_path)",
        ]
    # json.dumps writes the strings (and the chat turn) as Python literals, quotes in the prompt escaped.
    if chat:
        turn = [
            {"type": "image", "image": "photo.jpg"},
            {"type": "text", "text": prompt.strip() or DEFAULT_INSTRUCTION},
        ]
        call = [
            f"messages = [{json.dumps({'role': 'user', 'content': turn})}]",
            f"result = alt_text(text=messages, max_new_tokens={max_new_tokens}, return_full_text=False)",
        ]
    else:
        call = [f'result = alt_text("photo.jpg", text={json.dumps(prompt.strip())}, max_new_tokens={max_new_tokens})']
    generate = [
        "from transformers import pipeline\n",
        path_line,
        'alt_text = pipeline("image-text-to-text", model=model_path)',
        *call,
        'print(result[0]["generated_text"])',
    ]
    return "\n".join(["```python", *load, "```", "", "Alt text for a photo:", "", "```python", *generate, "```"])


def _metadata(base_model: str, is_adapter: bool, tags: list[str], datasets: list[str] | None = None) -> ModelCardData:
    return ModelCardData(
        base_model=None if is_local(base_model) else base_model,
        datasets=datasets,
        library_name="peft" if is_adapter else "transformers",
        pipeline_tag=PIPELINE_TAG,
        tags=[*TAGS, *tags],
    )


def model_card_text(summary: RunSummary, model_path: str, log_history: list[dict], best: str | None = None) -> str:
    """The card: metadata header, what was trained how, results, and how to load it from `model_path` (the
    folder's absolute path, or its Hub id)."""
    metadata = _metadata(
        summary.base_model,
        summary.is_adapter,
        [summary.recipe] if summary.recipe else [],
        [summary.dataset] if is_hub_id(summary.dataset) else None,
    )
    technique = TECHNIQUES.get(summary.recipe or "", summary.recipe or "fine-tuning")
    lines = [
        f"---\n{metadata.to_yaml()}\n---",
        f"# {_name(model_path)}\n",
        f"An alt-text writer: `{summary.base_model}` fine-tuned on `{summary.dataset}` with {technique}.",
        "It writes the short description a screen reader speaks for an image.\n",
        "## How to load\n",
        how_to_load(
            model_path,
            portable_name(summary.base_model) if summary.is_adapter else None,
            summary.chat,
            summary.prompt,
            summary.generation.get("max_new_tokens", 40),
        ),
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
    folder: str | Path, summary: RunSummary, model_path: str, log_history: list[dict], best: str | None = None
) -> Path:
    path = Path(folder) / "README.md"
    ModelCard(model_card_text(summary, model_path, log_history, best)).save(path)
    return path


def _name(model_path: str) -> str:
    return model_path.rstrip("/").split("/")[-1]


def write_merged_card(folder: str | Path, adapter_dir: str | Path, base_model: str, chat: bool) -> Path:
    """The card of an adapter merged into its base (recipes/merge_adapter.py): what it was merged from, how to
    load it without peft, and the adapter card's account of training and results."""
    adapter_card = Path(adapter_dir) / "README.md"
    adapter = ModelCard.load(adapter_card) if adapter_card.is_file() else None
    has_training = adapter is not None and "## Training" in adapter.text
    training = adapter.text[adapter.text.find("## Training") :] if has_training else ""
    recipe_tags = [tag for tag in (adapter.data.tags or [] if adapter else []) if tag not in TAGS]
    metadata = _metadata(base_model, False, [*recipe_tags, "merged"], adapter.data.datasets if adapter else None)
    model_path = os.path.abspath(folder)
    lines = [
        f"---\n{metadata.to_yaml()}\n---",
        f"# {_name(model_path)}\n",
        f"An alt-text writer: `{base_model}` with the LoRA adapter `{os.path.abspath(adapter_dir)}` merged into its "
        "weights (`recipes/merge_adapter.py`), so it loads without peft.\n",
        "## How to load\n",
        how_to_load(model_path, None, chat),
        "",
        *(["The adapter's training and results, from its card:\n", training] if training else []),
    ]
    path = Path(folder) / "README.md"
    ModelCard("\n".join(lines).rstrip() + "\n").save(path)
    return path
