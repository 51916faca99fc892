"""ROUGE-L of the COCO caption evaluation, as an `evaluate` module: `evaluate.load("<repo>/metrics/rouge_l")`."""

import evaluate
from pycocoevalcap.rouge.rouge import Rouge

from alt_text_recipes.outputs.caption_tokens import caption_metric_info, coco_inputs

_DESCRIPTION = """ROUGE-L (Lin, 2004) as pycocoevalcap computes it: the F-measure (beta 1.2) of the highest precision
and the highest recall of the longest common subsequence of the PTB-tokenized caption with each of the image's
references, averaged over the images. 0 to 1, higher is better."""


class RougeL(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return caption_metric_info(_DESCRIPTION)

    def _compute(self, predictions, references) -> dict:
        score, _ = Rouge().compute_score(*coco_inputs(predictions, references))
        return {"rouge_l": float(score)}
