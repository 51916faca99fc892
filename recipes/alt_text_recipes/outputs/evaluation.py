"""Score a model's generated alt text on a caption split: used during training and by evaluate_captions.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset, Image

from alt_text_recipes.data.errors import RecipeError
from alt_text_recipes.data.sources import as_reference_list, image_identity
from alt_text_recipes.outputs.generation import generate_for_dataset
from alt_text_recipes.outputs.guidelines import DEFAULT_MAX_CHARS
from alt_text_recipes.outputs.metrics import METRIC_NAMES, caption_scores
from alt_text_recipes.outputs.sentence_embeddings import BUNDLED_EMBEDDING_MODEL
from alt_text_recipes.train.modeling import inference_device, load_for_inference


@dataclass
class GenerationSettings:
    """How alt text is generated: the same settings in evaluation, in `alt_text.py` and on the model card."""

    prompt: str = ""
    max_new_tokens: int = 40
    num_beams: int = 1

    def as_kwargs(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams}


@dataclass
class CaptionEvaluation:
    scores: dict[str, float]
    captions: list[str]
    references: list[list[str]]


def images_with_references(dataset: Dataset) -> tuple[Dataset, list[list[str]]]:
    """One row per image (its first row, in order of first appearance) and all of that image's references.

    Caption data sets such as COCO hold one row per (image, caption): training uses every pair, but a
    caption is generated once per image and scored against all its references, as the COCO tables are.
    A caption column that already holds a list of references per row adds them all."""
    undecoded = dataset.select_columns(["image", "text"]).cast_column("image", Image(decode=False))
    first_rows: list[int] = []
    references_by_image: dict[tuple[str | None, str | None], list[str]] = {}
    for row, example in enumerate(undecoded):
        identity = image_identity(example["image"], row)
        if identity not in references_by_image:
            first_rows.append(row)
            references_by_image[identity] = []
        references_by_image[identity].extend(as_reference_list(example["text"]))
    return dataset.select(first_rows), list(references_by_image.values())


def evaluate_captions(
    model: torch.nn.Module,
    processor,
    dataset: Dataset,
    generation: GenerationSettings,
    batch_size: int = 8,
    embedding_model: str | None = BUNDLED_EMBEDDING_MODEL,
    progress: bool = False,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> CaptionEvaluation:
    """Generate alt text once for every image of `dataset` and score it against all its references (and the
    guidelines, with the length limit `max_chars`)."""
    images, references = images_with_references(dataset)
    captions = generate_for_dataset(model, processor, images, batch_size, progress, **generation.as_kwargs())
    return CaptionEvaluation(caption_scores(captions, references, embedding_model, max_chars), captions, references)


def parse_named_models(entries: list[str]) -> dict[str, str]:
    """`NAME=PATH` or `PATH` entries (a bare path is named by its folder) to {name: path}, names unique."""
    named: dict[str, str] = {}
    for entry in entries:
        name, _, path = entry.partition("=") if "=" in entry else (entry.rstrip("/").split("/")[-1], "", entry)
        if name in named:
            raise RecipeError(f"two models are named '{name}'; name them with NAME=PATH.")
        named[name] = path
    return named


def score_models(
    models: dict[str, str],
    dataset: Dataset,
    generation: GenerationSettings,
    batch_size: int = 16,
    embedding_model: str | None = BUNDLED_EMBEDDING_MODEL,
    dtype: str = "auto",
    max_chars: int = DEFAULT_MAX_CHARS,
) -> dict[str, CaptionEvaluation]:
    """Load each model or adapter folder in turn and score its generated alt text on `dataset`."""
    results = {}
    for name, path in models.items():
        model, processor = load_for_inference(path, dtype, device=inference_device())
        results[name] = evaluate_captions(
            model, processor, dataset, generation, batch_size, embedding_model, progress=True, max_chars=max_chars
        )
        print(
            f"{name}: " + ", ".join(f"{metric} {value:.4f}" for metric, value in results[name].scores.items()),
            flush=True,
        )
        del model
    return results


def scores_table(results: dict[str, CaptionEvaluation]) -> str:
    """Models as rows, metrics as columns (Markdown); the mean length in characters to one decimal."""
    metrics = [name for name in METRIC_NAMES if any(name in r.scores for r in results.values())]
    lines = ["| model | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, result in results.items():
        values = [f"{result.scores[m]:.1f}" if m.endswith("_chars") else f"{result.scores[m]:.4f}" for m in metrics]
        lines.append(f"| {name} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def examples_text(results: dict[str, CaptionEvaluation], count: int) -> str:
    """The first `count` images: the reference, then each model's alt text."""
    first = next(iter(results.values()))
    blocks = []
    for row in range(min(count, len(first.references))):
        lines = [f"[{row}] reference: {first.references[row][0]}"]
        lines += [f"    {name}: {result.captions[row]}" for name, result in results.items()]
        blocks.append("\n".join(lines))
    return "\n".join(blocks)
