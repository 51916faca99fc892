"""Check every example before training: each one is used (converted as needed) or skipped and counted.

Nothing is dropped silently: the report printed before training and written to the output folder gives
the number of rows kept and skipped per reason, with the first offending paths, how many captions will be
truncated, and what caption cleaning changed (`caption_cleaning.py`: rows per rule, before/after examples; a
caption left too short is a skipped row like any other). `--on_bad_example error` stops instead of skipping.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from datasets import Dataset, Image
from tqdm.auto import tqdm

from alt_text_recipes.data.caption_cleaning import CleaningReport, clean_row
from alt_text_recipes.data.images import BadImage, open_checked
from alt_text_recipes.data.logs import get_logger
from alt_text_recipes.data.sources import DatasetError, as_reference_list

logger = get_logger(__name__)

SHOWN_PROBLEMS = 5


@dataclass
class Problem:
    row: int
    path: str | None
    reason: str


@dataclass
class SplitReport:
    split: str
    rows: int
    kept: int = 0
    problems: list[Problem] = field(default_factory=list)
    truncated_captions: int = 0
    caption_cleaning: CleaningReport = field(default_factory=lambda: CleaningReport(enabled=False))

    def reasons(self) -> Counter:
        return Counter(problem.reason.split(" (")[0].split(":")[0] for problem in self.problems)

    def summary(self, max_caption_tokens: int | None = None) -> str:
        line = f"data check: '{self.split}' {self.rows} rows, {self.kept} used, {len(self.problems)} skipped"
        if self.problems:
            line += " (" + ", ".join(f"{count} {reason}" for reason, count in self.reasons().most_common()) + ")"
        if self.truncated_captions:
            line += f"; {self.truncated_captions} captions longer than {max_caption_tokens} tokens will be truncated"
        shown = [f"  row {p.row} {p.path or ''}: {p.reason}" for p in self.problems[:SHOWN_PROBLEMS]]
        return "\n".join([line, *shown, self.caption_cleaning.summary(self.split)])


def caption_problem(caption, caption_lists: bool = False) -> str | None:
    """Why a caption cannot be used, or None; with `caption_lists`, a list of references is checked whole."""
    if caption_lists and isinstance(caption, list):
        return next(filter(None, map(caption_problem, caption)), None) if caption else "no reference caption"
    if caption is None:
        return "missing caption"
    if not isinstance(caption, str):
        return f"caption is not text ({type(caption).__name__})"
    if not caption.strip():
        return "empty caption"
    return None


def _image_source(value: dict) -> tuple[str | bytes | None, str | None]:
    """The bytes or file of an undecoded `datasets.Image` value, and the path to show."""
    path = value.get("path") if isinstance(value, dict) else None
    data = value.get("bytes") if isinstance(value, dict) else None
    return (data if data else path), path


def image_limits(max_pixels: int | None = None, max_aspect_ratio: float | None = None) -> dict:
    """The limits given, as keyword arguments of `open_checked` (the ones not given keep its defaults)."""
    return {
        key: value
        for key, value in (("max_pixels", max_pixels), ("max_aspect_ratio", max_aspect_ratio))
        if value is not None
    }


def example_problem(example: dict, limits: dict, caption_lists: bool = False) -> tuple[str | None, str | None]:
    """Why an example (its image undecoded) cannot be used, or None; and the image's path to show."""
    source, path = _image_source(example["image"])
    reason = caption_problem(example["text"], caption_lists)
    if reason is None:
        try:
            if source is None:
                raise BadImage("no image")
            open_checked(source, **limits)
        except BadImage as error:
            reason = str(error)
    return reason, path


def cleaned_example(example: dict, cleaning: CleaningReport) -> tuple[str | list[str], str | None]:
    """A usable example's caption cleaned (counted in `cleaning`; as read when cleaning is off), and the reason
    to skip the row when cleaning left no caption long enough."""
    if not cleaning.enabled:
        return example["text"], None
    cleaned = clean_row(example["text"])
    cleaning.add(cleaned)
    return cleaned.value, cleaned.drop_reason() if cleaned.value is None else None


def check_split(
    split: Dataset,
    name: str,
    tokenizer=None,
    max_caption_tokens: int = 64,
    max_pixels: int | None = None,
    max_aspect_ratio: float | None = None,
    caption_lists: bool = False,
    clean_captions: bool = True,
) -> tuple[Dataset, SplitReport]:
    """Open every image and read every caption; return the usable rows, their captions cleaned, and the report.

    `caption_lists`: a row may hold a list of reference captions (scoring only; training learns one per row).
    Evaluation splits are cleaned here too, the same way as training ones: a model trained on cleaned captions
    is scored against cleaned references, not marked down for leaving out the hashtags and links it was
    taught to leave out."""
    report = SplitReport(name, len(split), caption_cleaning=CleaningReport(enabled=clean_captions))
    raw = split.cast_column("image", Image(decode=False))
    limits = image_limits(max_pixels, max_aspect_ratio)
    good_rows, texts = [], []
    for row, example in enumerate(tqdm(raw, desc=f"checking {name}", unit="image", leave=False, mininterval=2)):
        reason, path = example_problem(example, limits, caption_lists)
        if reason is None:
            text, reason = cleaned_example(example, report.caption_cleaning)
        if reason is None:
            good_rows.append(row)
            texts.append(text)
        else:
            report.problems.append(Problem(row, path, reason))
    report.kept = len(good_rows)
    kept_captions = [caption.strip() for text in texts for caption in as_reference_list(text)]
    if tokenizer is not None and kept_captions:
        lengths = [len(ids) for ids in tokenizer(kept_captions, add_special_tokens=False)["input_ids"]]
        report.truncated_captions = sum(length > max_caption_tokens for length in lengths)
    checked = split.select(good_rows) if report.problems else split
    return with_captions(checked, texts) if report.caption_cleaning.changed else checked, report


def with_captions(split: Dataset, texts: list) -> Dataset:
    """`split` with its caption column replaced by `texts` (one per row, in order), columns in their order."""
    replaced = split.remove_columns("text").add_column("text", texts, feature=split.features["text"])
    return replaced.select_columns(split.column_names)


def check_training_split(split: Dataset, name: str, tokenizer, data_args) -> tuple[Dataset, SplitReport]:
    """`check_split` with the limits the run's data arguments set (--max_caption_tokens, image limits,
    --clean_captions)."""
    return check_split(split, name, tokenizer, data_args.max_caption_tokens, data_args.max_image_pixels,
                       data_args.max_aspect_ratio, clean_captions=data_args.clean_captions)  # fmt: skip


def apply_policy(reports: list[SplitReport], policy: str, max_caption_tokens: int | None = None) -> None:
    """Log each split's report; with policy 'error' any problem stops the run, and a split left empty always does."""
    for report in reports:
        logger.info(report.summary(max_caption_tokens))
    problems = [report for report in reports if report.problems]
    if policy == "error" and problems:
        first = problems[0]
        raise DatasetError(
            f"{sum(len(r.problems) for r in problems)} bad example(s) "
            f"(first: '{first.split}' row {first.problems[0].row} {first.problems[0].path or ''}: "
            f"{first.problems[0].reason}). Fix them, or pass --on_bad_example skip to leave them out."
        )
    for report in reports:
        if report.kept == 0:
            raise DatasetError(
                f"split '{report.split}' has no usable example: every one of its {report.rows} rows "
                f"was skipped (first: {report.problems[0].reason})."
            )


def write_report(reports: list[SplitReport], folder: str | Path) -> Path:
    path = Path(folder) / "data_report.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            [{**asdict(report), "reasons": dict(report.reasons())} for report in reports], indent=2, ensure_ascii=False
        )
    )
    return path
