"""The one training loop every recipe runs, read top to bottom: the model, the data, the trainer, training, saving.

The trainer checks the data before the model's weights load, so a bad data set stops a run in seconds.

Each recipe (full_ft.py, lora.py, qlora.py) calls `main` with its name; two_stage.py calls `train` twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType
from datasets import Dataset
from transformers import TrainingArguments, set_seed
from trl import ModelConfig

from alt_text_recipes.data.checks import apply_policy, check_split, check_training_split, write_report
from alt_text_recipes.data.errors import RecipeError, exit_on_user_error
from alt_text_recipes.data.input_pipeline import prepare_for_training
from alt_text_recipes.data.library_internals import attention_implementation
from alt_text_recipes.data.logs import get_logger
from alt_text_recipes.data.sources import select_split
from alt_text_recipes.data.streaming import first_examples, load_caption_stream, streamed_splits
from alt_text_recipes.memory.measured import GB, MemoryBreakdownCallback, format_bytes, peak_memory
from alt_text_recipes.outputs.generation import generate_alt_text
from alt_text_recipes.outputs.model_card import run_summary
from alt_text_recipes.train.arguments import ScriptArguments, parse_recipe_args
from alt_text_recipes.train.collators import make_collator
from alt_text_recipes.train.families import family_of, trained_parts
from alt_text_recipes.train.modeling import (
    add_lora,
    check_lora_targets,
    choose_trainable_parts,
    load_config,
    load_model,
    load_processor,
    lora_targets,
    meta_model,
)
from alt_text_recipes.train.parallel import (
    align_query_tokens_for_fsdp,
    lone_launch_warning,
    parse_device_map,
    scaled_learning_rate,
)
from alt_text_recipes.train.trainer import AltTextTrainer, resume_checkpoint

logger = get_logger(__name__)


@dataclass
class TrainResult:
    output_dir: str
    train_seconds: float
    peak_bytes: int
    peak_source: str
    losses: list[float]
    memory_reports: list


# --- The model -----------------------------------------------------------------------------------------------


def check_model_config(script_args: ScriptArguments, model_args: ModelConfig) -> None:
    """What the config alone settles, in seconds: a model this project has no family for, and LoRA targets that
    match none of its modules (checked on the model built on the meta device: shapes, no memory)."""
    config = load_config(model_args.model_name_or_path, script_args.trust_remote_code)
    family_of(config)
    if model_args.use_peft:
        skeleton = meta_model(config)
        check_lora_targets(skeleton, lora_targets(skeleton, model_args))


def build_model(
    script_args: ScriptArguments, training_args: TrainingArguments, model_args: ModelConfig
) -> torch.nn.Module:
    """The model as the recipe trains it: loaded (quantized, placed), adapters added, the right parts trainable."""
    parts = trained_parts(script_args.train_modules, model_args.use_peft)
    model = load_model(
        model_args,
        parse_device_map(script_args.device_map),
        script_args.trust_remote_code,
        full_parts=parts if model_args.use_peft else (),
        use_cpu=training_args.use_cpu,
    )
    if model_args.use_peft:
        model = add_lora(model, model_args, training_args.gradient_checkpointing, parts)
    choose_trainable_parts(model, parts, adapters=model_args.use_peft)
    if PartialState().distributed_type == DistributedType.FSDP:
        align_query_tokens_for_fsdp(model)
    trainable, total = count_parameters(model)
    logger.info(
        f"model {model_args.model_name_or_path}: {total:,} parameters, {trainable:,} trainable "
        f"({100 * trainable / total:.2f}%), {attention_implementation(model.config)} attention"
    )
    return model


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


# --- The data ------------------------------------------------------------------------------------------------


def build_splits(
    script_args: ScriptArguments, training_args: TrainingArguments, processor
) -> tuple[Dataset, Dataset | None, list]:
    """The training and evaluation splits, streamed or loaded, and the callbacks a stream needs."""
    if script_args.streaming:
        return streamed_splits(script_args, training_args, processor)
    return (*loaded_splits(script_args, training_args, processor), [])


def loaded_splits(
    script_args: ScriptArguments, training_args: TrainingArguments, processor
) -> tuple[Dataset, Dataset | None]:
    """The training and evaluation splits, loaded, checked (the report printed and written) and prepared."""
    splits = script_args.load_splits(training_args.seed)
    wanted = {script_args.train_split: script_args.max_train_samples}
    if training_args.eval_strategy != "no":
        wanted[script_args.eval_split] = script_args.max_eval_samples
    checked, reports = {}, []
    for name, max_samples in wanted.items():
        selected = select_split(splits, name, max_samples)
        checked[name], report = check_training_split(selected, name, processor.tokenizer, script_args)
        reports.append(report)
    apply_policy(reports, script_args.on_bad_example, script_args.max_caption_tokens)
    if training_args.process_index == 0:  # one report file
        write_report(reports, training_args.output_dir)
    train_split = checked[script_args.train_split]
    if script_args.fast_inputs:
        with training_args.main_process_first(desc="image cache"):  # the first process fills the cache
            train_split = prepare_for_training(
                train_split, processor, script_args.cache_images, training_args.dataloader_num_workers
            )
    eval_split = checked.get(script_args.eval_split) if training_args.eval_strategy != "no" else None
    return train_split, eval_split


# --- The trainer ---------------------------------------------------------------------------------------------


def build_trainer(
    script_args: ScriptArguments, training_args: TrainingArguments, model_args: ModelConfig
) -> AltTextTrainer:
    # What is quick to check comes before the weights load (minutes for a real model): the model's config, then
    # the data (a wrong path, a split without one usable example).
    check_model_config(script_args, model_args)
    processor = load_processor(model_args.model_name_or_path, script_args.trust_remote_code)
    train_split, eval_split, data_callbacks = build_splits(script_args, training_args, processor)
    model = build_model(script_args, training_args, model_args)
    memory_callback = MemoryBreakdownCallback(script_args.memory_report_steps)
    trainer = AltTextTrainer(
        model=model,
        args=training_args,
        train_dataset=train_split,
        eval_dataset=eval_split,
        data_collator=make_collator(processor, model, script_args.prompt, script_args.max_caption_tokens),
        processing_class=processor,
        callbacks=[memory_callback, *data_callbacks],
        generation=script_args.generation_settings(),
        embedding_model=script_args.embedding_model,
        alt_text_max_chars=script_args.alt_text_max_chars,
        caption_metrics=script_args.caption_metrics,
        caption_samples=script_args.caption_samples,
        run_summary=run_summary(script_args, training_args, model_args, chat=family_of(model).uses_chat_template),
    )
    memory_callback.trainer = trainer
    return trainer


# --- Training ------------------------------------------------------------------------------------------------


def train(script_args: ScriptArguments, training_args: TrainingArguments, model_args: ModelConfig) -> TrainResult:
    """Train with parsed arguments, save the model (or adapter) with its processor and card, report."""
    if warning := lone_launch_warning():
        logger.warning(warning)
    apply_lr_scaling(script_args, training_args)
    set_seed(training_args.seed)
    trainer = build_trainer(script_args, training_args, model_args)
    state = PartialState()  # what accelerate made of the launch (FSDP on a CPU falls back to DDP)
    logger.info(
        f"strategy: {state.distributed_type.value} over {state.num_processes} process(es) on {training_args.device}"
    )
    train_seconds = fit(trainer, script_args, training_args, model_args)
    peak_bytes, peak_source = save_and_report(trainer, script_args, train_seconds)
    if script_args.show_examples > 0 and trainer.is_world_process_zero():  # generated once, by the main process
        show_examples(trainer, script_args)

    memory_callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, MemoryBreakdownCallback))
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return TrainResult(
        training_args.output_dir, train_seconds, peak_bytes, peak_source, losses, memory_callback.reports
    )


def fit(
    trainer: AltTextTrainer, script_args: ScriptArguments, training_args: TrainingArguments, model_args: ModelConfig
) -> float:
    """Run the Trainer (resuming as asked) and return the seconds it took; out of memory ends with advice."""
    start = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=resume_checkpoint(training_args))
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        # The estimator's predictions for the next techniques: imported only by a run that has run out.
        from alt_text_recipes.memory.oom_advice import advice_for_run

        tokenizer = trainer.processing_class.tokenizer
        raise RecipeError(advice_for_run(script_args, training_args, model_args, tokenizer)) from None
    return time.perf_counter() - start


def apply_lr_scaling(script_args: ScriptArguments, training_args: TrainingArguments) -> None:
    """Scale the learning rate with the number of data-parallel processes, and say so."""
    processes = training_args.world_size
    if script_args.scale_lr == "none" and processes == 1:
        return
    scaled = scaled_learning_rate(training_args.learning_rate, processes, script_args.scale_lr)
    global_batch = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * processes
    logger.info(
        f"learning rate: {training_args.learning_rate:g} -> {scaled:g} ({script_args.scale_lr} scaling, "
        f"{processes} processes, global batch {global_batch})"
    )
    training_args.learning_rate = scaled


# --- Saving and reporting ------------------------------------------------------------------------------------


def save_and_report(trainer: AltTextTrainer, script_args: ScriptArguments, train_seconds: float) -> tuple[int, str]:
    """Save the run's state (and, unless told not to, the model with its card); log time and peak memory.
    Returns this process's peak bytes and what measured them."""
    training_args = trainer.args
    peak_bytes, peak_source = peak_memory(training_args.device)
    rank_peaks = gather_peaks(trainer, peak_bytes)
    trainer.run_summary.peak_memory = f"{format_bytes(max(rank_peaks))} ({peak_source}, highest process)"
    trainer.run_summary.train_seconds = train_seconds
    trainer.save_state()  # trainer_state.json: the logged loss curve, memory reports and evaluations
    if script_args.save_final_model:
        # Saves the full model or only the adapter, the processor beside it (so the folder reloads alone) and
        # the model card; with --push_to_hub the Trainer uploads the folder to --hub_model_id.
        trainer.save_model(training_args.output_dir)
        trainer.create_model_card()
    logger.info(
        f"saved to {training_args.output_dir}"
        if script_args.save_final_model
        else f"not saved (--save_final_model false); {training_args.output_dir}/trainer_state.json holds the run's log"
    )
    logger.info(f"train time: {train_seconds:.1f} s | peak memory: {peak_bytes / GB:.2f} GB ({peak_source})")
    if len(rank_peaks) > 1:
        logger.info(
            "peak memory per rank: "
            + ", ".join(f"rank {rank} {peak / GB:.2f} GB" for rank, peak in enumerate(rank_peaks))
        )
    return peak_bytes, peak_source


def gather_peaks(trainer: AltTextTrainer, peak_bytes: int) -> list[int]:
    """Every rank's peak, collected on all ranks (a collective: every rank must call it)."""
    if trainer.accelerator.num_processes == 1:
        return [peak_bytes]
    peaks = trainer.accelerator.gather(
        torch.tensor([peak_bytes], dtype=torch.int64, device=trainer.accelerator.device)
    )
    return peaks.tolist()


def show_examples(trainer: AltTextTrainer, script_args: ScriptArguments) -> None:
    if script_args.streaming:
        splits = load_caption_stream(
            script_args.dataset_name,
            script_args.image_column,
            script_args.caption_column,
            script_args.dataset_config,
            script_args.data_format,
        )
    else:
        splits = script_args.load_splits(trainer.args.seed)
    split_name = script_args.test_split if script_args.test_split in splits else script_args.train_split
    first = (
        first_examples(splits[split_name], script_args.show_examples)
        if script_args.streaming
        else select_split(splits, split_name, script_args.show_examples)
    )
    examples, _ = check_split(first, split_name, clean_captions=script_args.clean_captions)
    alt_texts = generate_alt_text(
        trainer.model,
        trainer.processing_class,
        list(examples["image"]),
        **script_args.generation_settings().as_kwargs(),
    )
    logger.info(f"\nAlt text for {len(examples)} {split_name} images:")
    for index, (reference, alt_text) in enumerate(zip(examples["text"], alt_texts, strict=True)):
        logger.info(f"  [{index}] alt text : {alt_text}\n      reference: {reference}")


# --- Entry points --------------------------------------------------------------------------------------------


def run(recipe: str | None, args: list[str] | None = None) -> TrainResult:
    """Parse recipe `recipe`'s arguments (its defaults < YAML < CLI; None: the project's defaults alone), train,
    save and report."""
    result = train(*parse_recipe_args(recipe, args))
    leave_process_group()
    return result


def leave_process_group() -> None:
    """After the last training run of a process: leave the process group together. A rank exiting while
    gloo threads still run aborts with SIGABRT after a successful run (seen with two launchers on two
    "machines")."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def main(recipe: str) -> None:
    """Entry point of a recipe file: a bad input ends with one readable line, not a traceback."""
    exit_on_user_error(run, recipe)
