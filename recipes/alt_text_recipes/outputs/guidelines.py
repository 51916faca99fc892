"""Alt text measured against the accessibility guidelines that CIDEr cannot see.

CIDEr, BLEU-4 and ROUGE-L reward words shared with the references; a caption can score well and still be a poor
alt text. Four numbers say how far generated alt text follows the usual guidance (WCAG, WebAIM):

- `guideline_within_limit`: share of captions at most `max_chars` characters long (125 by default: many screen
  readers cut or page longer alt text). Higher is better.
- `guideline_redundant_opening`: share opening with "image of", "a picture of", "photo showing"...: screen readers
  already announce an image. Lower is better.
- `guideline_social_markup`: share holding a hashtag, a URL, a @handle or an emoji, which screen readers read out
  character by character or by name. Lower is better.
- `guideline_mean_chars`: mean length in characters (how close to the limit the captions run).

Lengths are counted on the caption with its runs of whitespace made one space, as `alt_text.py` writes it. The
patterns are those of `data/caption_patterns.py`, so caption cleaning and these metrics mean the same things.
"""

from __future__ import annotations

from typing import Sequence

from alt_text_recipes.data.caption_patterns import EMOJI, HANDLE, HASHTAG, REDUNDANT_OPENING, URL

DEFAULT_MAX_CHARS = 125
GUIDELINE_METRICS = (
    "guideline_within_limit",
    "guideline_redundant_opening",
    "guideline_social_markup",
    "guideline_mean_chars",
)
# Shares of captions that break a guideline: `--metric_for_best_model` with one of them keeps the lowest.
LOWER_IS_BETTER = ("guideline_redundant_opening", "guideline_social_markup")
SOCIAL_MARKUP = (HASHTAG, URL, HANDLE, EMOJI)


def normalized(caption: str) -> str:
    """The caption as it would be written: runs of whitespace made one space, none at the ends."""
    return " ".join(caption.split())


def has_redundant_opening(caption: str) -> bool:
    return REDUNDANT_OPENING.match(caption) is not None


def has_social_markup(caption: str) -> bool:
    return any(pattern.search(caption) for pattern in SOCIAL_MARKUP)


def guideline_scores(captions: Sequence[str], max_chars: int = DEFAULT_MAX_CHARS) -> dict[str, float]:
    """The four guideline metrics of `captions` (at least one)."""
    if not captions:
        raise ValueError("no captions to measure against the guidelines.")
    if max_chars < 1:
        raise ValueError(f"max_chars {max_chars}: give at least 1 character.")
    lengths = [len(normalized(caption)) for caption in captions]
    count = len(captions)
    return {
        "guideline_within_limit": sum(length <= max_chars for length in lengths) / count,
        "guideline_redundant_opening": sum(map(has_redundant_opening, captions)) / count,
        "guideline_social_markup": sum(map(has_social_markup, captions)) / count,
        "guideline_mean_chars": sum(lengths) / count,
    }


def drop_redundant_opening(caption: str) -> str:
    """The caption without an "image of"-style opening ("A picture of a bowl of soup" -> "a bowl of soup"); a
    caption that would be left empty is kept as it is."""
    rest = REDUNDANT_OPENING.sub("", caption, count=1)
    return rest if rest.strip() else caption
