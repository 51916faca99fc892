"""Watch the alt text change while training: at each evaluation, the first few evaluation images with the alt
text the model wrote for them beside their references, in TensorBoard (the images, and one table as text) and in
W&B (a table).

`AltTextTrainer` keeps the samples from each caption evaluation (`CaptionSample`); `CaptionSamplesCallback` hands
them to the writers of transformers' own `TensorBoardCallback` and `WandbCallback`, so they land in the same run
as the loss and the metrics, at the evaluation's step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from datasets import Dataset
from PIL import Image
from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback, WandbCallback

from alt_text_recipes.data.images import to_rgb
from alt_text_recipes.data.library_internals import open_tensorboard_writer

# The longest side of a logged image: enough to recognise the photo, while a real photo (COCO: 640×480) logged at
# every evaluation does not swell the event file or the W&B run.
SAMPLE_IMAGE_SIDE = 256
TABLE_COLUMNS = ("image", "generated", "reference")


@dataclass
class CaptionSample:
    """One evaluation image (a small copy), the alt text generated for it and its references."""

    image: Image.Image
    generated: str
    references: list[str]

    @property
    def reference(self) -> str:
        return " / ".join(self.references)


def small_copy(image: Image.Image) -> Image.Image:
    """An RGB copy at most SAMPLE_IMAGE_SIDE on its longest side (never enlarged)."""
    copy = to_rgb(image).copy()
    copy.thumbnail((SAMPLE_IMAGE_SIDE, SAMPLE_IMAGE_SIDE))
    return copy


def first_samples(
    images: Dataset, captions: list[str], references: list[list[str]], count: int
) -> list[CaptionSample]:
    """The first `count` images of an evaluation (the same ones every time), with their alt text and references."""
    first = images.select(range(min(count, len(images))))["image"]
    return [
        CaptionSample(small_copy(image), caption, image_references)
        for image, caption, image_references in zip(first, captions, references, strict=False)
    ]


def reported_to(callbacks: list[TrainerCallback]) -> bool:
    """Whether the Trainer reports to a place that shows caption samples (`--report_to tensorboard` or `wandb`)."""
    return any(isinstance(callback, (TensorBoardCallback, WandbCallback)) for callback in callbacks)


def _table_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(samples: list[CaptionSample]) -> str:
    """The samples as a Markdown table, numbered as their images are tagged."""
    lines = ["| # | generated | reference |", "|---|---|---|"]
    lines += [
        f"| {index} | {_table_cell(sample.generated)} | {_table_cell(sample.reference)} |"
        for index, sample in enumerate(samples)
    ]
    return "\n".join(lines)


def log_to_tensorboard(
    callback: TensorBoardCallback, args, name: str, samples: list[CaptionSample], step: int
) -> None:
    """Each image as `{name}/alt_text_image_{i}` and the table as `{name}/alt_text`, in the callback's run folder."""
    if callback.tb_writer is None:  # closed when training ends: an evaluate() after train() opens it again
        open_tensorboard_writer(callback, args)
    writer = callback.tb_writer
    for index, sample in enumerate(samples):
        writer.add_image(f"{name}/alt_text_image_{index}", np.asarray(sample.image), step, dataformats="HWC")
    writer.add_text(f"{name}/alt_text", markdown_table(samples), step)
    writer.flush()


def log_to_wandb(callback: WandbCallback, name: str, samples: list[CaptionSample], step: int) -> None:
    """One `wandb.Table` (image, generated, reference) as `{name}/alt_text`, in the callback's run."""
    import wandb  # installed: the Trainer runs WandbCallback only when it is

    if wandb.run is None:
        return
    table = wandb.Table(columns=list(TABLE_COLUMNS))
    for sample in samples:
        table.add_data(wandb.Image(sample.image), sample.generated, sample.reference)
    # The step metric WandbCallback defines for every key, so the table lines up with the metrics.
    wandb.run.log({f"{name}/alt_text": table, "train/global_step": step})


class CaptionSamplesCallback(TrainerCallback):
    """After each evaluation, the main process logs the samples the trainer kept to TensorBoard and W&B, when
    they are reported to (`--report_to`: the Trainer then runs their callbacks)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_evaluate(self, args, state, control, **kwargs):
        samples = self.trainer.caption_samples
        if not samples or not state.is_world_process_zero:
            return
        name = self.trainer.caption_samples_name
        for callback in self.trainer.callback_handler.callbacks:
            if isinstance(callback, TensorBoardCallback):
                log_to_tensorboard(callback, args, name, samples, state.global_step)
            elif isinstance(callback, WandbCallback):
                log_to_wandb(callback, name, samples, state.global_step)
