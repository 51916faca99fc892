"""Caption cleaning: what user-contributed captions (a photo site's) carry that alt text must not.

A model learns to write what its captions hold: trained on "Pizza night!!! 🍕 #food #yum https://..." it writes
hashtags and links into alt text. Each rule below removes one such thing; a caption left with fewer than
MIN_WORDS words says too little to learn from and its row is skipped (counted, listed, never silently).
`clean_caption` cleans one caption and says which rules changed it; `CleaningReport` counts the rows each rule
changed and keeps a few before/after examples for the data report (data_report.json) and the log.

Rules, in the order they run:
- `url`: links removed; `handle`: @handles removed; each with the word that credits or points to it ("photo by
  @maria", "via www...");
- `hashtag_block`: a trailing block of hashtags dropped (two or more, or one set apart by a line break,
  punctuation or an emoji); `hashtag_inline`: a hashtag inside the text kept as its word ("#pizza" -> "pizza");
- `emoji`: emoji and pictographs removed; `repeated_punctuation`: "yum!!!" -> "yum!", "?!?" -> "?", ",," -> ",",
  ".." -> ".", "...." -> "..." (an ellipsis is kept);
- `whitespace`: line breaks, tabs and runs of spaces collapsed, the caption stripped (with the spaces a removal
  leaves before punctuation, and separators or empty brackets left dangling);
- `too_short_after_cleaning`: fewer than MIN_WORDS words left: the row is dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

from alt_text_recipes.data.caption_patterns import (
    CREDITED_HANDLE,
    CREDITED_URL,
    EMOJI,
    HASHTAG,
    REPEATED_MARKS,
    TRAILING_HASHTAGS,
)

MIN_WORDS = 3
EXAMPLES_PER_RULE = 3
WHITESPACE = "whitespace"
TOO_SHORT = "too_short_after_cleaning"
WORD = re.compile(r"[^\W_]+")


def _without_trailing_hashtags(text: str) -> str:
    """The caption without its closing block of hashtags. A single closing hashtag that continues the sentence
    ("I love #pizza") is no block: the inline rule keeps its word."""
    block = TRAILING_HASHTAGS.search(text)
    if block is None:
        return text
    before = text[: block.start()]
    continues_sentence = re.search(r"\w[ \t]*\Z", before) is not None
    if len(HASHTAG.findall(block.group())) == 1 and continues_sentence:
        return text
    return before


def _single_mark(match: re.Match) -> str:
    marks = match.group()
    if marks[0] == ".":
        return "..." if len(marks) > 2 else "."
    return marks[0]


# Each rule maps a caption to the caption without what it removes; removals leave a space, tidied at the end.
RULES: dict[str, Callable[[str], str]] = {
    "url": lambda text: CREDITED_URL.sub(" ", text),
    "handle": lambda text: CREDITED_HANDLE.sub(" ", text),
    "hashtag_block": _without_trailing_hashtags,
    "hashtag_inline": lambda text: HASHTAG.sub(lambda tag: tag.group(1).replace("_", " "), text),
    "emoji": lambda text: EMOJI.sub(" ", text),
    "repeated_punctuation": lambda text: REPEATED_MARKS.sub(_single_mark, text),
}
RULE_NAMES = (*RULES, WHITESPACE, TOO_SHORT)


def tidy(text: str) -> str:
    """Whitespace collapsed and stripped, with what removals leave behind: a space before punctuation, empty
    brackets, a dangling separator ("Lunch at the cafe - https://...")."""
    text = re.sub(r"\s+", " ", re.sub(r"\(\s*\)|\[\s*\]", " ", text))
    text = re.sub(r" (?=[,.!?;:])", "", text)
    return text.strip(" -–—|/:;,")


@dataclass(frozen=True)
class CleanedCaption:
    text: str
    rules: tuple[str, ...]  # the rules that changed the caption, in the order they ran

    @property
    def kept(self) -> bool:
        return TOO_SHORT not in self.rules


def clean_caption(caption: str) -> CleanedCaption:
    """One caption cleaned, and the rules that changed it. A rule counts when the caption differs after it,
    spacing aside: the gap a removal leaves is the removal's, `whitespace` counts the caption's own layout."""
    text, fired = caption, []
    for name, rule in RULES.items():
        cleaned = rule(text)
        if tidy(cleaned) != tidy(text):
            fired.append(name)
        text = cleaned
    text = tidy(text)
    if tidy(caption) != caption:
        fired.append(WHITESPACE)
    if len(WORD.findall(text)) < MIN_WORDS:
        fired.append(TOO_SHORT)
    return CleanedCaption(text, tuple(fired))


@dataclass(frozen=True)
class CleanedRow:
    """A row's caption (or list of reference captions) cleaned: `value` is None when no caption is left."""

    value: str | list[str] | None
    fired: dict[str, tuple[str, str]]  # rule -> (before, after) of the first caption of the row it changed

    def counts(self) -> list[int]:
        """What this row adds to a `CleaningReport`'s counts (in the order of `CleaningReport.counts`)."""
        return [1, bool(self.fired), self.value is None, *(rule in self.fired for rule in RULE_NAMES)]

    def drop_reason(self) -> str:
        before, after = self.fired[TOO_SHORT]
        return f"caption too short after cleaning (fewer than {MIN_WORDS} words: '{before}' -> '{after}')"


def clean_row(value: str | Sequence[str]) -> CleanedRow:
    """Clean one row's caption; a list of references keeps the ones long enough, the row goes when none is."""
    captions = [value] if isinstance(value, str) else list(value)
    results = [clean_caption(caption) for caption in captions]
    fired: dict[str, tuple[str, str]] = {}
    for before, result in zip(captions, results, strict=True):
        for rule in result.rules:
            fired.setdefault(rule, (before, result.text))
    kept = [result.text for result in results if result.kept]
    if not kept:
        return CleanedRow(None, fired)
    return CleanedRow(kept[0] if isinstance(value, str) else kept, fired)


@dataclass
class CleaningReport:
    """What cleaning did to one split: rows read, changed (by any rule) and dropped, the rows each rule changed,
    and up to EXAMPLES_PER_RULE before/after examples per rule. `enabled` False: captions were used verbatim."""

    enabled: bool = True
    rows: int = 0
    changed: int = 0
    dropped: int = 0
    rules: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RULE_NAMES, 0))
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    def counts(self) -> list[int]:
        """rows, changed, dropped, then the rows each rule changed (in RULE_NAMES order)."""
        return [self.rows, self.changed, self.dropped, *(self.rules[rule] for rule in RULE_NAMES)]

    def add_counts(self, counts: Sequence[int]) -> None:
        self.rows, self.changed, self.dropped, *per_rule = (a + b for a, b in zip(self.counts(), counts, strict=True))
        self.rules = dict(zip(RULE_NAMES, per_rule, strict=True))

    def add(self, row: CleanedRow) -> None:
        self.add_counts(row.counts())
        for rule, (before, after) in row.fired.items():
            self.keep_example(rule, before, after)

    def keep_example(self, rule: str, before: str, after: str) -> bool:
        """Keep this example of `rule` unless EXAMPLES_PER_RULE are kept already; whether it was kept."""
        shown = self.examples.setdefault(rule, [])
        if len(shown) >= EXAMPLES_PER_RULE:
            return False
        shown.append({"before": before, "after": after})
        return True

    @classmethod
    def merged(cls, reports: Sequence[CleaningReport]) -> CleaningReport:
        """One report from the reports of the processes that each cleaned a part of a split."""
        total = cls(enabled=all(report.enabled for report in reports))
        for report in reports:
            total.add_counts(report.counts())
            for rule, shown in report.examples.items():
                for example in shown:
                    total.keep_example(rule, example["before"], example["after"])
        return total

    def summary(self, split: str) -> str:
        """The log lines: the counts per rule, and the first example of each rule that changed a caption."""
        if not self.enabled:
            return f"caption cleaning: off for '{split}' (--clean_captions false): captions used verbatim"
        counts = ", ".join(f"{rule} {count}" for rule, count in self.rules.items() if count) or "nothing to clean"
        lines = [
            f"caption cleaning: '{split}' {self.rows} rows, {self.changed} changed, {self.dropped} dropped "
            f"(fewer than {MIN_WORDS} words left); rows changed per rule: {counts}"
        ]
        shown = {rule: self.examples[rule][0] for rule in RULE_NAMES if self.examples.get(rule)}
        lines += [f"  {rule}: {example['before']!r} -> {example['after']!r}" for rule, example in shown.items()]
        return "\n".join(lines)
