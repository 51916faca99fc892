"""What the COCO caption metrics (the evaluate modules in metrics/bleu4, metrics/cider, metrics/rouge_l) share:
their inputs, and the captions tokenized by pycocoevalcap's PTB tokenizer (Stanford CoreNLP, run with Java;
lower-cased, punctuation removed), so the numbers compare with published captioning results."""

from __future__ import annotations

import shutil
from functools import lru_cache
from typing import TYPE_CHECKING, Sequence

import datasets

from alt_text_recipes.data.errors import RecipeError
from alt_text_recipes.data.sources import as_reference_list

if TYPE_CHECKING:
    import evaluate

# One generated caption per image, with one reference or a list of them (COCO: five per image).
CAPTION_FEATURES = [
    datasets.Features(
        {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
    ),
    datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
]
CAPTION_INPUTS = """
Args:
    predictions: one generated caption per image (str).
    references: that image's reference caption (str) or captions (list of str).
Returns:
    a dict with the metric's value (float).
"""
COCO_CITATION = """@article{chen2015microsoft, title={Microsoft COCO Captions: Data Collection and Evaluation Server},
author={Chen, Xinlei and Fang, Hao and Lin, Tsung-Yi and others}, journal={arXiv:1504.00325}, year={2015}}"""


def caption_metric_info(description: str, citation: str = COCO_CITATION) -> evaluate.MetricInfo:
    """The `_info` of a caption metric module: (prediction, references) pairs."""
    import evaluate  # here: it imports the transformers pipelines, seconds that only the metric modules pay

    return evaluate.MetricInfo(
        description=description,
        citation=citation,
        inputs_description=CAPTION_INPUTS,
        features=CAPTION_FEATURES,
        codebase_urls=["https://github.com/salaniz/pycocoevalcap"],
    )


def paired_references(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> list[list[str]]:
    """Each image's references as a list, one image per prediction (at least one)."""
    reference_lists = [as_reference_list(reference) for reference in references]
    if len(predictions) != len(reference_lists) or not predictions:
        raise ValueError(f"{len(predictions)} predictions for {len(reference_lists)} references.")
    return reference_lists


@lru_cache(maxsize=4)
def _ptb_tokenized(groups: tuple[tuple[str, ...], ...]) -> tuple[tuple[str, ...], ...]:
    """Kept for the last few calls: BLEU-4, CIDEr and ROUGE-L of the same captions start Java once, not thrice."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    if shutil.which("java") is None:
        raise RecipeError(
            "caption metrics need Java for the COCO (PTB) tokenizer: install a JRE "
            "(Debian: apt-get install default-jre-headless)."
        )
    # An empty caption would be an empty line, which the tokenizer drops; a lone space keeps the lines aligned.
    lines = {
        key: [{"caption": caption if caption.strip() else " "} for caption in group]
        for key, group in enumerate(groups)
    }
    tokenized = PTBTokenizer().tokenize(lines)
    if any(len(tokenized.get(key, [])) != len(group) for key, group in enumerate(groups)):
        raise RecipeError("the PTB tokenizer returned a different number of captions than it was given.")
    return tuple(tuple(tokenized[key]) for key in range(len(groups)))


def ptb_tokenize(groups: Sequence[Sequence[str]]) -> dict[int, list[str]]:
    """Each group of captions (an image's references, or its one generated caption) tokenized, by position."""
    return {key: list(group) for key, group in enumerate(_ptb_tokenized(tuple(tuple(group) for group in groups)))}


def coco_inputs(
    predictions: Sequence[str], references: Sequence[str | Sequence[str]]
) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """(references, predictions) tokenized, in the form pycocoevalcap's scorers take."""
    reference_lists = paired_references(predictions, references)
    return ptb_tokenize(reference_lists), ptb_tokenize([[prediction] for prediction in predictions])
