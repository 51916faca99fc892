"""BLEU-4 of the COCO caption evaluation, as an `evaluate` module: `evaluate.load("<repo>/metrics/bleu4")`."""

import evaluate
from pycocoevalcap.bleu.bleu import Bleu

from alt_text_recipes.outputs.caption_tokens import caption_metric_info, coco_inputs

_DESCRIPTION = """Corpus BLEU-4 (Papineni et al., 2002) as pycocoevalcap computes it: captions and references
tokenized by the PTB tokenizer (Java), n-grams up to 4 clipped by the most a reference holds, the brevity penalty of
the closest reference length. Every reference of an image counts. 0 to 1, higher is better."""


class Bleu4(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return caption_metric_info(_DESCRIPTION)

    def _compute(self, predictions, references) -> dict:
        scores, _ = Bleu(4).compute_score(*coco_inputs(predictions, references), verbose=0)
        return {"bleu4": float(scores[3])}
