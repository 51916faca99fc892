"""CIDEr of the COCO caption evaluation, as an `evaluate` module: `evaluate.load("<repo>/metrics/cider")`."""

import evaluate
from pycocoevalcap.cider.cider import Cider as CiderScorer

from alt_text_recipes.outputs.caption_tokens import caption_metric_info, coco_inputs

_DESCRIPTION = """CIDEr (Vedantam et al., 2015) as pycocoevalcap computes it (CIDEr-D): TF-IDF weighted n-grams
(1 to 4) of the PTB-tokenized caption against all the image's references, clipped, with a Gaussian length penalty,
times 10; the document frequencies come from the references of the captions scored together, so a score depends on
the whole set. 0 to 10, higher is better."""


class Cider(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return caption_metric_info(_DESCRIPTION)

    def _compute(self, predictions, references) -> dict:
        score, _ = CiderScorer().compute_score(*coco_inputs(predictions, references))
        return {"cider": float(score)}
