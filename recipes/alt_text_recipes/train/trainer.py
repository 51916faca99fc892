"""`AltTextTrainer`: the Trainer, plus caption metrics from real generation and our model card.

Evaluation runs the Trainer's own loop (eval loss), then generates alt text for the evaluation split the
way it will be used (no teacher forcing) and adds BLEU-4, CIDEr, ROUGE-L, the embedding distance and the
guideline metrics to the metrics, as `eval_cider`, `eval_guideline_within_limit` etc., so
`--metric_for_best_model cider` and `--load_best_model_at_end` work.
The first few images with their generated alt text go to TensorBoard and W&B (`caption_samples.py`).
"""

from __future__ import annotations

import gc
import json
import math
import os
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.data_loader import prepare_data_loader
from accelerate.utils import gather_object
from datasets import Dataset, IterableDataset
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from alt_text_recipes.data.errors import RecipeError, first_line
from alt_text_recipes.data.library_internals import (
    cached_eval_dataloaders,
    forget_eval_dataloaders,
    shut_down_workers,
)
from alt_text_recipes.data.logs import get_logger
from alt_text_recipes.outputs.caption_samples import CaptionSample, CaptionSamplesCallback, first_samples, reported_to
from alt_text_recipes.outputs.evaluation import GenerationSettings, images_with_references
from alt_text_recipes.outputs.generation import generate_for_dataset
from alt_text_recipes.outputs.guidelines import DEFAULT_MAX_CHARS
from alt_text_recipes.outputs.metrics import caption_scores
from alt_text_recipes.outputs.model_card import RunSummary, write_model_card

logger = get_logger(__name__)

EXAMPLES_IN_LOG = 2
# Written into a checkpoint folder once everything in it is saved: a run killed while saving leaves a
# folder without it, which resuming never mistakes for a complete checkpoint.
COMPLETE_MARKER = "checkpoint-complete.json"


def is_complete_checkpoint(folder: str | Path) -> bool:
    return (Path(folder) / COMPLETE_MARKER).is_file()


def latest_complete_checkpoint(output_dir: str | Path) -> tuple[str | None, list[str]]:
    """The newest complete `checkpoint-N` in output_dir, and the incomplete ones newer than it."""
    folders = sorted(
        (
            p
            for p in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*")
            if p.is_dir() and p.name.split("-")[-1].isdigit()
        ),
        key=lambda p: int(p.name.split("-")[-1]),
        reverse=True,
    )
    incomplete = []
    for folder in folders:
        if is_complete_checkpoint(folder):
            return str(folder), incomplete
        incomplete.append(str(folder))
    return None, incomplete


def resume_checkpoint(training_args: TrainingArguments) -> str | None:
    """`--resume_from_checkpoint auto`: the newest complete checkpoint in output_dir (none: start fresh)."""
    requested = training_args.resume_from_checkpoint
    if requested in (None, ""):
        return None
    if requested == "auto":
        checkpoint, incomplete = latest_complete_checkpoint(training_args.output_dir)
        for folder in incomplete:
            logger.info(f"resume: {folder} is incomplete (the run stopped while saving it); not used")
        logger.info(f"resume: {'from ' + checkpoint if checkpoint else 'no complete checkpoint, starting fresh'}")
        return checkpoint
    if not Path(requested).is_dir():
        raise RecipeError(f"--resume_from_checkpoint {requested}: no such folder.")
    if not is_complete_checkpoint(requested):
        raise RecipeError(
            f"--resume_from_checkpoint {requested}: this checkpoint is incomplete (the run stopped while "
            "saving it). Use an earlier one, or --resume_from_checkpoint auto."
        )
    return requested


class MarkCompleteCheckpoints(TrainerCallback):
    """Mark a checkpoint complete once every process has written its part (sharded strategies write one each):
    a run killed while saving leaves a folder without the marker, which resuming skips."""

    def on_save(self, args: TrainingArguments, state, control, **kwargs):
        PartialState().wait_for_everyone()
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            (folder / COMPLETE_MARKER).write_text(json.dumps({"global_step": state.global_step}))


class NoGradientsIntoFrozenInputs(TrainerCallback):
    """Undo the input-embedding hooks that activation checkpointing adds, when they are not needed.

    With checkpointing on, transformers (and peft) make the output of *every* sub-model's input embeddings
    require gradients, the vision tower's patch embeddings included (LLaVA, Idefics2: their main input is
    `input_ids`). A frozen vision tower then records its whole graph and backpropagates to its patches for
    nothing: for LLaVA-1.5 at real width, 13× the activations it needs. The hooks only serve reentrant
    checkpointing, which drops gradients whose inputs do not require them; the non-reentrant checkpointing
    the recipes use does not, so adapters and trained parts get their gradients without them."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        kwargs_of_checkpointing = args.gradient_checkpointing_kwargs or {}
        if model is None or kwargs_of_checkpointing.get("use_reentrant", True):
            return
        for module in model.modules():
            if getattr(module, "_require_grads_hooks", None):
                module.disable_input_require_grads()


class AltTextTrainer(Trainer):
    def __init__(
        self,
        *args,
        generation: GenerationSettings,
        embedding_model: str | None,
        caption_metrics: bool,
        run_summary: RunSummary,
        caption_samples: int = 0,
        alt_text_max_chars: int = DEFAULT_MAX_CHARS,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.add_callback(NoGradientsIntoFrozenInputs())
        self.add_callback(CaptionSamplesCallback(self))
        self.add_callback(MarkCompleteCheckpoints())
        self.generation = generation
        self.embedding_model = embedding_model
        self.alt_text_max_chars = alt_text_max_chars
        self.caption_metrics = caption_metrics
        self.run_summary = run_summary
        # How many of the first evaluation images the main process keeps, with their generated alt text, for
        # TensorBoard and W&B; `caption_samples_name` is the evaluation's metric prefix ("eval").
        self.caption_sample_count = caption_samples
        self.caption_samples: list[CaptionSample] = []
        self.caption_samples_name = "eval"
        self._flops_per_token: int | None = None

    def train(self, *args, **kwargs):
        """The Trainer's `train`, with less host time around the steps.

        The objects alive at the start (libraries, model, data: ~500k) are frozen out of the garbage
        collector for the run (`gc.freeze`): the full `gc.collect()` the Trainer runs at the start of training
        then takes milliseconds instead of 0.3-0.9 s, and the forked DataLoader workers do not copy the pages
        the collector would touch. Persistent DataLoader workers (started once, not once per epoch) are shut
        down here when training ends: left to the interpreter's exit, each stalls for 5 s."""
        self._flops_per_token = None  # the model may have changed since the last run
        freeze = gc.get_freeze_count() == 0  # someone else's freeze is left as it is
        if freeze:
            gc.freeze()
        try:
            return super().train(*args, **kwargs)
        finally:
            self.close_dataloader_workers()
            if freeze:
                gc.unfreeze()

    def close_dataloader_workers(self) -> None:
        """Shut down the worker processes that persistent DataLoaders (training, cached evaluation) keep."""
        for loader in (getattr(self.callback_handler, "train_dataloader", None), *cached_eval_dataloaders(self)):
            shut_down_workers(loader)
        forget_eval_dataloaders(self)

    def get_train_dataloader(self) -> DataLoader:
        """A stream split by process (`alt_text_recipes.data.streaming.rank_share`) is read by each process itself,
        whole.

        Prepared by the Trainer, accelerate would either read it on the first process and send the batches
        out (`dispatch_batches`, its default for iterable data) or split each process's part again (`.shard`
        or `IterableDatasetShard` with dispatch off), which drops (N-1)/N of it. So the loader is prepared
        here as one process's: batches are moved to the device and nothing is split."""
        if not isinstance(self.train_dataset, IterableDataset) or self.args.world_size == 1:
            return super().get_train_dataloader()
        args = self.args
        loader = DataLoader(
            self.train_dataset,
            batch_size=self.args.train_batch_size,  # --auto_find_batch_size is not for streams
            collate_fn=self.data_collator,
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
            persistent_workers=args.dataloader_persistent_workers,
            prefetch_factor=args.dataloader_prefetch_factor,
            multiprocessing_context=args.dataloader_multiprocessing_context,
        )
        return prepare_data_loader(
            loader,
            self.accelerator.device,
            num_processes=1,
            process_index=0,
            put_on_device=True,
            dispatch_batches=False,
            non_blocking=self.accelerator.non_blocking,
        )

    def floating_point_ops(self, inputs) -> int:
        """The Trainer's estimate (6 × input elements × non-embedding parameters), with the parameter count
        taken once per run: counting walks every module and parameter, a millisecond or two per step."""
        main_input = getattr(self.model, "main_input_name", "input_ids")
        if main_input not in inputs or not hasattr(self.model, "num_parameters"):
            return 0
        if self._flops_per_token is None:
            self._flops_per_token = 6 * self.model.num_parameters(exclude_embeddings=True)
        return self._flops_per_token * inputs[main_input].numel()

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        self.caption_samples, self.caption_samples_name = [], metric_key_prefix  # none kept from an earlier one
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix: str = "eval"
    ):
        """The Trainer's loss over the evaluation split, with the caption metrics of real generation beside it, in the
        same metrics (logged, reported, and read by --metric_for_best_model and early stopping)."""
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        dataset = dataloader.dataset  # the evaluation split itself: the collator reads its raw columns
        if self.caption_metrics and description == "Evaluation" and isinstance(dataset, Dataset):
            scores = self.generated_caption_scores(dataset)
            output.metrics.update({f"{metric_key_prefix}_{name}": value for name, value in scores.items()})
        return output

    def generated_caption_scores(self, dataset: Dataset) -> dict[str, float]:
        """Every process generates for its share of the images of `dataset` (once per image, however many
        rows hold its references); the first scores all of them, keeps the first few as samples and shares
        the scores."""
        images, references = images_with_references(dataset)
        captions = self._generate_sharded(images)
        scores = None
        if self.is_world_process_zero():
            scores = caption_scores(captions, references, self.embedding_model, self.alt_text_max_chars)
            if reported_to(self.callback_handler.callbacks):  # thumbnails nobody would see are not made
                self.caption_samples = first_samples(images, captions, references, self.caption_sample_count)
            for caption, reference in list(zip(captions, references, strict=True))[:EXAMPLES_IN_LOG]:
                logger.info(f"[eval] generated: {caption!r} | reference: {reference[0]!r}")
        if self.args.world_size > 1:
            shared = [scores]
            torch.distributed.broadcast_object_list(shared, src=0)
            scores = shared[0]
        return scores

    def _generate_sharded(self, dataset: Dataset) -> list[str]:
        # Equal contiguous shards (the last padded with the final row): sharded models (FSDP, ZeRO-3)
        # need every process to run the same number of generate calls.
        world, rank = self.args.world_size, self.args.process_index
        per_process = math.ceil(len(dataset) / world)
        rows = [min(row, len(dataset) - 1) for row in range(rank * per_process, (rank + 1) * per_process)]
        with self.autocast_smart_context_manager():
            captions = generate_for_dataset(
                self.model,
                self.processing_class,
                dataset.select(rows),
                self.args.per_device_eval_batch_size,
                **self.generation.as_kwargs(),
            )
        if world > 1:
            captions = gather_object(captions)  # concatenated in process order
        return captions[: len(dataset)]

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """--push_to_hub makes (or finds) the Hub repository as the trainer is built, before training: without a
        login, a network or the right to the name, the run ends there in one line."""
        try:
            super().init_hf_repo(token, private)
        except Exception as error:  # noqa: BLE001 - making a repository fails only for Hub reasons
            raise RecipeError(
                f"--push_to_hub: cannot create or reach the Hub repository {self._repo_name()!r} "
                f"({first_line(error, with_type=True)}). Log in (`hf auth login`, or set HF_TOKEN) on a machine "
                "that reaches the Hub and check --hub_model_id, or train without --push_to_hub and upload the output "
                "folder later "
                f"(`hf upload {self._repo_name()} {self.args.output_dir}`)."
            ) from None

    def push_to_hub(self, *args, **kwargs):
        """The final upload: if it fails, say that the model is saved here and how to upload it later."""
        try:
            return super().push_to_hub(*args, **kwargs)
        except RecipeError:
            raise
        except Exception as error:  # noqa: BLE001 - the files are on disk; only the upload failed
            repo = getattr(self, "hub_model_id", None) or self._repo_name()
            raise RecipeError(
                f"the model is saved in {self.args.output_dir}, but the upload to the Hub repository {repo!r} "
                f"failed ({first_line(error, with_type=True)}). Upload it with "
                f"`hf upload {repo} {self.args.output_dir}`."
            ) from None

    def _repo_name(self) -> str:
        return self.args.hub_model_id or Path(self.args.output_dir).absolute().name

    def create_model_card(self, model_name: str | None = None, **kwargs) -> None:
        """Our card (base model, data, technique, hyper-parameters, metrics, memory peak, how to load)."""
        if not self.is_world_process_zero():
            return
        # Where the card's loading code reads the model from: the Hub repository, else this folder from anywhere.
        model_path = (
            getattr(self, "hub_model_id", None) or self.args.hub_model_id or os.path.abspath(self.args.output_dir)
        )
        best = None
        if self.args.load_best_model_at_end and self.state.best_model_checkpoint:
            best = (
                f"the best checkpoint by {self.args.metric_for_best_model} ({self.state.best_metric:.4g}), "
                f"step {self.state.best_global_step}"
            )
        write_model_card(self.args.output_dir, self.run_summary, model_path, self.state.log_history, best)
