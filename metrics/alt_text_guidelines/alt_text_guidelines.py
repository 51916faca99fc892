"""Alt text against the accessibility guidelines, as an `evaluate` module:
`evaluate.load("<repo>/metrics/alt_text_guidelines")`, then `.compute(predictions=..., max_chars=125)`."""

import datasets
import evaluate

from alt_text_recipes.outputs.guidelines import DEFAULT_MAX_CHARS, guideline_scores

_DESCRIPTION = """What CIDEr cannot see: the share of captions within `max_chars` characters (guideline_within_limit,
higher is better), the share opening with "image of"/"picture of"... (guideline_redundant_opening, lower is better),
the share holding a hashtag, URL, @handle or emoji (guideline_social_markup, lower is better) and the mean length in
characters (guideline_mean_chars). No references: the captions alone are measured."""
_INPUTS = """
Args:
    predictions: generated alt text (str), one per image.
    max_chars: the length limit in characters (default 125).
Returns:
    guideline_within_limit, guideline_redundant_opening, guideline_social_markup (shares, 0 to 1) and
    guideline_mean_chars.
"""


class AltTextGuidelines(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="WCAG 2.2, 1.1.1 Non-text Content; WebAIM, Alternative Text (webaim.org/techniques/alttext)",
            inputs_description=_INPUTS,
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, max_chars: int = DEFAULT_MAX_CHARS) -> dict:
        return guideline_scores(predictions, max_chars)
