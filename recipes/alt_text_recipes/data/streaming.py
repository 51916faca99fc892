"""Train from a stream (`datasets.IterableDataset`) instead of a loaded data set: memory stays flat however
large the collection, since examples are read, checked and decoded as training asks for them.

Sources (`--streaming --dataset_name ...`):
- WebDataset `.tar` shards: a folder of them (splits from the file names, `train-000.tar`,
  `validation-000.tar`, as `datasets` names them; otherwise all train) or a glob such as `shards/train-*.tar`
  (the same glob with `validation` / `test` for `train` names the other splits, where it matches files).
  A shard holds `KEY.jpg` (or png, webp, ...) with `KEY.txt` (the caption) or `KEY.json` holding a
  `caption` field (or the field `--caption_column` names);
- an `imagefolder` folder (as `data/gourmetgram-mini`) and Hub dataset ids, which `datasets` streams itself.
A folder's layout is decided as without --streaming (`data_formats.folder_format`, `--data_format`), except that
under `auto` .tar shards win; caption files and save_to_disk folders are read without --streaming.

Each process reads its own part (`split_dataset_by_node`: whole shards when their count divides by the
number of processes, otherwise every N-th example), and the Trainer is kept from splitting it again
(`AltTextTrainer.get_train_dataloader`). The bad-example policy of `checks.py` and caption cleaning
(`caption_cleaning.py`) apply as the stream is read (`StreamCheck`); the counts go to `data_report.json` when
training ends.
"""

from __future__ import annotations

import glob
import json
import multiprocessing
import os
import tempfile
from functools import partial
from pathlib import Path

from accelerate.utils import gather_object
from datasets import Dataset, Features, Image, IterableDataset, IterableDatasetDict, Value, load_dataset
from datasets.distributed import split_dataset_by_node
from transformers import TrainerCallback, TrainingArguments

from alt_text_recipes.data.caption_cleaning import CleanedRow, CleaningReport, clean_row
from alt_text_recipes.data.checks import (
    Problem,
    SplitReport,
    apply_policy,
    check_training_split,
    example_problem,
    image_limits,
    write_report,
)
from alt_text_recipes.data.data_formats import folder_format, has_shards, imagefolder_files
from alt_text_recipes.data.errors import DatasetError
from alt_text_recipes.data.input_pipeline import prepare_for_training
from alt_text_recipes.data.layouts import standardise
from alt_text_recipes.data.paths import is_local, resolve_local

# Examples held to shuffle the stream (as undecoded bytes): bounded memory, some mixing across shards.
SHUFFLE_BUFFER = 1000
OTHER_SPLITS = ("validation", "test")


class BadStreamExample(DatasetError):
    """A bad example met while streaming with `--on_bad_example error`.

    It is raised in a DataLoader worker; torch raises it again in the training process as
    `BadStreamExample(<the worker's traceback>)`, so the message keeps only the last thing said."""

    def __init__(self, message: str):
        super().__init__(message.rstrip().rsplit(f"{type(self).__name__}: ", 1)[-1])


def _shard_globs(train_glob: str) -> dict[str, str]:
    """`data_files` for a glob of training shards: the same glob with `validation` / `test` for `train`
    names those splits, where it matches files."""
    if not glob.glob(train_glob):
        raise DatasetError(f"no file matches {train_glob}.")
    pattern = Path(train_glob)
    siblings = {split: str(pattern.with_name(pattern.name.replace("train", split))) for split in OTHER_SPLITS}
    return {
        "train": train_glob,
        **{split: sibling for split, sibling in siblings.items() if "train" in pattern.name and glob.glob(sibling)},
    }


def _load_raw_stream(
    name_or_path: str, config_name: str | None, data_format: str, image_column: str, caption_column: str
) -> IterableDatasetDict:
    """The raw stream of a glob of shards, a Hub id or a local folder, its layout decided as without --streaming
    (`folder_format`), except that .tar shards in the folder win under `auto`: they are what streaming is for."""
    if glob.has_magic(name_or_path) and data_format in ("auto", "webdataset"):
        return load_dataset("webdataset", data_files=_shard_globs(name_or_path), streaming=True)
    if not is_local(name_or_path):
        if data_format != "auto":
            raise _not_streamed(name_or_path, f"--data_format {data_format} (a Hub id needs auto)")
        return load_dataset(name_or_path, config_name, streaming=True)
    folder = Path(resolve_local(name_or_path))
    if data_format == "auto" and has_shards(folder):
        layout = "webdataset"
    else:
        layout = folder_format(folder, image_column, caption_column, data_format)[0]
    if layout == "webdataset":  # `datasets` finds the splits from the file names
        return load_dataset("webdataset", data_dir=str(folder), streaming=True)
    if layout == "imagefolder":
        return load_dataset("imagefolder", streaming=True, **imagefolder_files(folder))
    if layout == "saved":
        raise DatasetError(
            f"{name_or_path} is a save_to_disk folder, which is read memory-mapped already: train "
            "on it without --streaming."
        )
    raise _not_streamed(name_or_path, "caption files, whose rows name the photos (read as training asks for them)")


def _not_streamed(source: str, what: str) -> DatasetError:
    return DatasetError(
        f"--streaming reads WebDataset shards, imagefolder folders and Hub ids; {source} is read as {what}: "
        "train on it without --streaming."
    )


def _caption_from_json(example: dict, field: str) -> dict:
    return {"text": (example["json"] or {}).get(field)}


def _webdataset_columns(
    split: IterableDataset, image_column: str, caption_column: str
) -> tuple[IterableDataset, str, str]:
    """A WebDataset split names its columns by file extension (`jpg`, `txt`, `json`): find the image and caption."""
    features = split.features
    if image_column not in features:
        images = [name for name, feature in features.items() if isinstance(feature, Image)]
        image_column = images[0] if len(images) == 1 else image_column
    if caption_column in features:
        return split, image_column, caption_column
    if "txt" in features:
        return split, image_column, "txt"
    if "json" in features and isinstance(features["json"], dict):
        field = caption_column if caption_column in features["json"] else "caption"
        with_text = Features({**features, "text": Value("string")})
        return split.map(partial(_caption_from_json, field=field), features=with_text), image_column, "text"
    return split, image_column, caption_column  # `standardise` says which column is missing


def load_caption_stream(
    name_or_path: str,
    image_column: str = "image",
    caption_column: str = "text",
    config_name: str | None = None,
    data_format: str = "auto",
) -> IterableDatasetDict:
    """Every split of a caption data set as a stream, its columns renamed to `image` and `text`; `data_format`
    as without --streaming (`auto`, `webdataset` or `imagefolder` stream)."""
    raw = _load_raw_stream(name_or_path, config_name, data_format, image_column, caption_column)
    if not raw:
        raise DatasetError(f"{name_or_path} holds no splits.")
    standardised = {}
    for name, split in raw.items():
        split, image, caption = _webdataset_columns(_undecoded(split), image_column, caption_column)
        standardised[name] = standardise(split, image, caption, name_or_path, name).cast_column("image", Image())
    return IterableDatasetDict(standardised)


def _undecoded(split: IterableDataset) -> IterableDataset:
    """Image columns as stored bytes: renaming a column and reading a JSON caption are `map`s on a stream, which
    decode every image they pass, so a broken one would fail there, before the bad-example check."""
    for name, feature in (split.features or {}).items():
        if isinstance(feature, Image):
            split = split.cast_column(name, Image(decode=False))
    return split


def select_stream(streams: IterableDatasetDict, name: str) -> IterableDataset:
    if name not in streams:
        raise DatasetError(f"no split '{name}'; the data set has {list(streams)}. Choose one with the split flags.")
    return streams[name]


def rank_share(
    stream: IterableDataset, rank: int, world_size: int, seed: int | None = None, max_samples: int | None = None
) -> IterableDataset:
    """This process's part of `stream`, no example shared with another process: whole shards when their
    count divides by `world_size`, otherwise every `world_size`-th example. With a seed, shard order and
    examples are shuffled (in a buffer of SHUFFLE_BUFFER), the same way on every process."""
    if max_samples is not None:
        stream = stream.take(max_samples)
    if seed is not None:
        stream = stream.shuffle(seed=seed, buffer_size=SHUFFLE_BUFFER)
    return split_dataset_by_node(stream, rank=rank, world_size=world_size) if world_size > 1 else stream


def _temporary_file(prefix: str) -> str:
    handle, path = tempfile.mkstemp(prefix=prefix, suffix=".jsonl")
    os.close(handle)
    return path


class StreamCheck:
    """The bad-example check of `checks.check_split` and its caption cleaning, applied to each example as the
    stream is read (a `filter` function, run in the DataLoader workers): a caption left too short by cleaning
    refuses its example; `checked_stream` cleans the captions of the examples it lets through.

    The counts live in shared memory, the problems and cleaning examples in append-only files, so the training
    process sees what every worker found. Examples read twice (a stream shorter than --max_steps asks for is
    read again) are counted twice."""

    def __init__(
        self,
        split: str,
        policy: str,
        max_pixels: int | None = None,
        max_aspect_ratio: float | None = None,
        clean_captions: bool = True,
    ):
        self.split = split
        self.policy = policy
        self.limits = image_limits(max_pixels, max_aspect_ratio)
        self.clean_captions = clean_captions
        context = multiprocessing.get_context()
        self.counts = context.Array("q", 2)  # examples read, examples kept
        self.cleaning_counts = context.Array("q", len(CleaningReport().counts()), lock=False)  # under counts' lock
        self.shown = CleaningReport()  # the examples this worker has written (each worker has its own copy)
        self.problems_path = _temporary_file(f"stream-{split}-problems-")
        self.examples_path = _temporary_file(f"stream-{split}-cleaning-")

    def __call__(self, example: dict) -> bool:
        reason, path = example_problem(example, self.limits)
        cleaned = clean_row(example["text"]) if reason is None and self.clean_captions else None
        if cleaned is not None and cleaned.value is None:
            reason = cleaned.drop_reason()
        with self.counts.get_lock():
            row = self.counts[0]
            self.counts[0] += 1
            self.counts[1] += reason is None
            for index, count in enumerate(cleaned.counts() if cleaned else ()):
                self.cleaning_counts[index] += count
        if cleaned is not None:
            self.write_examples(cleaned)
        if reason is None:
            return True
        if self.policy == "error":
            raise BadStreamExample(
                f"bad example in the '{self.split}' stream ({path or 'example ' + str(row)}: "
                f"{reason}). Fix it, or pass --on_bad_example skip to leave it out."
            )
        with open(self.problems_path, "a", encoding="utf-8") as log:  # one short append: atomic between workers
            log.write(json.dumps({"row": row, "path": path, "reason": reason}) + "\n")
        return False

    def write_examples(self, cleaned: CleanedRow) -> None:
        """This worker's first examples of each rule, for the report (it keeps the first of all workers')."""
        lines = [
            json.dumps({"rule": rule, "before": before, "after": after}) + "\n"
            for rule, (before, after) in cleaned.fired.items()
            if self.shown.keep_example(rule, before, after)
        ]
        if lines:  # one short append, a few times per worker: atomic between workers
            with open(self.examples_path, "a", encoding="utf-8") as log:
                log.write("".join(lines))

    def report(self) -> SplitReport:
        """What this process's readers have found so far."""
        with open(self.problems_path, encoding="utf-8") as log:
            problems = [Problem(**json.loads(line)) for line in log]
        cleaning = CleaningReport(enabled=self.clean_captions)
        cleaning.add_counts(self.cleaning_counts[:])
        with open(self.examples_path, encoding="utf-8") as log:
            for line in log:
                cleaning.keep_example(**json.loads(line))
        return SplitReport(
            self.split, rows=self.counts[0], kept=self.counts[1], problems=problems, caption_cleaning=cleaning
        )

    def close(self) -> None:
        Path(self.problems_path).unlink(missing_ok=True)
        Path(self.examples_path).unlink(missing_ok=True)


def _cleaned_caption(example: dict) -> dict:
    return {"text": clean_row(example["text"]).value}


def checked_stream(stream: IterableDataset, check: StreamCheck) -> IterableDataset:
    """`stream` without the examples `check` refuses (it reads their stored bytes; decoded after), captions
    cleaned when the check cleans them."""
    checked = stream.cast_column("image", Image(decode=False)).filter(check)
    if check.clean_captions:
        checked = checked.map(_cleaned_caption, features=checked.features)
    return checked.cast_column("image", Image())


def merge_reports(reports: list[SplitReport]) -> SplitReport:
    """One split's report from the reports of the processes that each read a part of it."""
    return SplitReport(
        reports[0].split,
        rows=sum(r.rows for r in reports),
        kept=sum(r.kept for r in reports),
        problems=[problem for report in reports for problem in report.problems],
        caption_cleaning=CleaningReport.merged([report.caption_cleaning for report in reports]),
    )


def first_examples(stream: IterableDataset, max_samples: int | None) -> Dataset:
    """The first `max_samples` examples of a stream (all of it without a limit) as an ordinary data set,
    images undecoded: for the evaluation split, which every evaluation reads whole."""
    stored = stream.cast_column("image", Image(decode=False))
    limited = stored.take(max_samples) if max_samples is not None else stored
    return Dataset.from_list(list(limited), features=stored.features).cast_column("image", Image())


class StreamReportCallback(TrainerCallback):
    """When training ends: the training stream's counts from every process, merged into one report,
    checked by the policy (a stream that gave nothing usable is an error), printed and written to
    data_report.json beside the reports of the splits checked before training."""

    def __init__(self, check: StreamCheck, other_reports: list[SplitReport], max_caption_tokens: int):
        self.check = check
        self.other_reports = other_reports
        self.max_caption_tokens = max_caption_tokens

    def on_train_end(self, args, state, control, **kwargs):
        reports = gather_object([self.check.report()]) if args.world_size > 1 else [self.check.report()]
        self.check.close()
        merged = [merge_reports(reports), *self.other_reports]
        if args.process_index == 0:  # one report file
            write_report(merged, args.output_dir)
        apply_policy(merged, self.check.policy, self.max_caption_tokens)


def streamed_splits(
    script_args, training_args: TrainingArguments, processor
) -> tuple[IterableDataset, Dataset | None, list[TrainerCallback]]:
    """With --streaming: this process's part of the training stream, checked as it is read (and, with
    --fast_inputs, decoded and resized in the DataLoader workers, never cached), the evaluation split read
    into memory and checked now, and the callback that writes the data report when training ends."""
    streams = load_caption_stream(
        script_args.dataset_name,
        script_args.image_column,
        script_args.caption_column,
        script_args.dataset_config,
        script_args.data_format,
    )
    check = StreamCheck(
        script_args.train_split,
        script_args.on_bad_example,
        script_args.max_image_pixels,
        script_args.max_aspect_ratio,
        script_args.clean_captions,
    )
    share = rank_share(
        select_stream(streams, script_args.train_split),
        training_args.process_index,
        training_args.world_size,
        training_args.seed,
        script_args.max_train_samples,
    )
    train_stream = checked_stream(share, check)
    if script_args.fast_inputs:
        train_stream = prepare_for_training(train_stream, processor)
    eval_split, reports = None, []
    if training_args.eval_strategy != "no":
        name = script_args.eval_split
        first = first_examples(select_stream(streams, name), script_args.max_eval_samples)
        eval_split, report = check_training_split(first, name, processor.tokenizer, script_args)
        reports.append(report)
        apply_policy(reports, script_args.on_bad_example, script_args.max_caption_tokens)
    return train_stream, eval_split, [StreamReportCallback(check, reports, script_args.max_caption_tokens)]
