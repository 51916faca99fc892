"""When the GPU runs out of memory, or an estimate says it would: say what to try next, with predictions."""

from __future__ import annotations

import copy

import torch

from alt_text_recipes.memory.estimator import Estimate, caption_token_count, estimate
from alt_text_recipes.memory.measured import GB


def _variant(args, **changes):
    changed = copy.copy(args)
    for name, value in changes.items():
        setattr(changed, name, value)
    return changed


def next_techniques(training_args, model_args) -> list[tuple[str, object, object]]:
    """(what to pass, changed TrainingArguments, changed ModelConfig) for each technique not yet in use."""
    options = []
    batch, accumulation = training_args.per_device_train_batch_size, training_args.gradient_accumulation_steps
    if batch > 1:
        options.append(
            (
                f"--per_device_train_batch_size {batch // 2} --gradient_accumulation_steps {accumulation * 2}",
                _variant(
                    training_args, per_device_train_batch_size=batch // 2, gradient_accumulation_steps=accumulation * 2
                ),
                model_args,
            )
        )
    if not training_args.gradient_checkpointing:
        options.append(("--gradient_checkpointing", _variant(training_args, gradient_checkpointing=True), model_args))
    if model_args.dtype in (None, "auto", "float32") and not model_args.load_in_4bit:
        options.append(
            ("--dtype bfloat16 --bf16", _variant(training_args, bf16=True), _variant(model_args, dtype="bfloat16"))
        )
    if not model_args.use_peft and "8bit" not in str(training_args.optim):
        options.append(("--optim adamw_bnb_8bit", _variant(training_args, optim="adamw_bnb_8bit"), model_args))
    if not model_args.use_peft:
        options.append(("recipes/lora.py (LoRA)", training_args, _variant(model_args, use_peft=True)))
    if not model_args.load_in_4bit:
        options.append(
            (
                "recipes/qlora.py (QLoRA, 4-bit base)",
                training_args,
                _variant(model_args, use_peft=True, load_in_4bit=True, bnb_4bit_quant_type="nf4"),
            )
        )
    return options


def advice_for_run(script_args, training_args, model_args, tokenizer) -> str:
    """`out_of_memory_advice` for a run that ran out, its captions' length counted with its own tokenizer."""
    caption_tokens = caption_token_count(script_args, model_args, training_args.seed, tokenizer)
    return out_of_memory_advice(script_args, training_args, model_args, caption_tokens)


def out_of_memory_advice(script_args, training_args, model_args, caption_tokens: int) -> str:
    """The peak reached, the device's size, and each next technique with the estimator's prediction."""
    lines = []
    device_gb = None
    if torch.cuda.is_available():
        device_gb = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / GB
        lines.append(
            f"GPU out of memory: the run reached {torch.cuda.max_memory_allocated() / GB:.1f} GB allocated "
            f"on a {device_gb:.0f} GB GPU."
        )
    else:
        lines.append("out of memory.")
    options = {"gpu_memory_gb": device_gb or 80.0}
    try:
        current = estimate(script_args, training_args, model_args, caption_tokens, **options)
    except Exception as error:  # no estimate must not hide the advice, nor stand in for it
        lines.append(f"No memory estimate can be made for this model ({_first_line(error)}). Try, one at a time:")
        lines += [f"  {flags}" for flags, _, _ in next_techniques(training_args, model_args)]
    else:
        lines.append(f"Estimated for these settings: {current.total_gb:.1f} GB per GPU. {TRY}")
        predictions = predicted_techniques(script_args, training_args, model_args, caption_tokens, **options)
        lines += technique_lines(predictions)
    lines.append(MORE)
    return "\n".join(lines)


TRY = "Try, one at a time (predicted GB per GPU with only that change):"
MORE = "More: `python recipes/estimate.py <recipe> ...` and the technique matrix in docs/memory.md."


def predicted_techniques(
    script_args, training_args, model_args, caption_tokens: int, **options
) -> list[tuple[str, Estimate | None]]:
    """Each technique not yet in use (`next_techniques`) with the estimate for the run with only that change, under
    the same `estimate` options (GPU memory, GPU count, strategy, device); None where none can be made."""
    predictions = []
    for flags, changed_training, changed_model in next_techniques(training_args, model_args):
        try:
            predicted = estimate(script_args, changed_training, changed_model, caption_tokens, **options)
        except Exception:  # an estimate that cannot be made must not hide the advice
            predicted = None
        predictions.append((flags, predicted))
    return predictions


def technique_lines(predictions: list[tuple[str, Estimate | None]]) -> list[str]:
    return [
        f"  {flags}: (no estimate for this change)"
        if predicted is None
        else f"  {flags}: {predicted.total_gb:.1f} GB{'' if predicted.fits else ' (still too much)'}"
        for flags, predicted in predictions
    ]


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"estimator: {text[0]}" if text else f"estimator: {type(error).__name__}"
