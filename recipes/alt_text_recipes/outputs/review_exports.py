"""What a review gives back: the reviewed captions to train on, preference pairs, the published files rewritten with
the reviewed text, and what the review says about each model (review_summary.json)."""

from __future__ import annotations

import csv
import io
import json
import os
from collections import defaultdict
from pathlib import Path

from rapidfuzz.distance import Levenshtein

from alt_text_recipes.outputs.alt_text_files import AltTextRecord, write_atomically, write_csv
from alt_text_recipes.outputs.review_store import GENERATED_LISTING, LISTING, STATUSES, ReviewStore

SUMMARY_FILE = "review_summary.json"
KEPT = ("accepted", "edited")  # the statuses whose text is a caption to train on
RECORD_FIELDS = {"path", "alt_text", "generated", "sha256"}  # a listing row's own fields; the rest are settings


def image_path(path: Path, folder: Path | None) -> str:
    """A photo's path as a caption file names it: relative to the file's `folder` when the photo is inside it
    (data/layouts.py reads such paths relative to the file), absolute otherwise."""
    path = Path(os.path.abspath(path))
    if folder is not None and path.is_relative_to(Path(os.path.abspath(folder))):
        return path.relative_to(os.path.abspath(folder)).as_posix()
    return str(path)


def captions_csv(store: ReviewStore, folder: Path | None = None) -> tuple[str, int]:
    """The reviewed captions as a CSV that --dataset_name reads (columns `image`, `text`): accepted photos with
    the model's text, edited ones with the edit; rejected and unreviewed ones left out. Paths are relative to
    `folder` (where the CSV goes) when the photo is inside it. Returns the text and the number of rows."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["image", "text"])
    kept = [(photo, final) for photo, status, final in store.reviewed() if status in KEPT]
    writer.writerows([image_path(photo.image.path, folder), final] for photo, final in kept)
    return text.getvalue(), len(kept)


def preference_pairs(store: ReviewStore) -> tuple[str, int]:
    """Each edited photo as a preference pair in TRL's format for vision data (`images`, `prompt`, `chosen`,
    `rejected`), as JSON lines: the edit is chosen over the model's text. Returns the text and the pair count."""
    pairs = [
        {
            "images": [image_path(photo.image.path, None)],
            "prompt": photo.prompt,
            "chosen": final,
            "rejected": photo.alt_text,
        }
        for photo, status, final in store.reviewed()
        if status == "edited"
    ]
    return json_lines(pairs), len(pairs)


def json_lines(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def export(text: str, destination: str | Path) -> Path:
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(destination, text)
    return destination


def publish_reviewed(store: ReviewStore) -> dict[str, int]:
    """Rewrite alt_text.jsonl and alt_text.csv with the reviewed text: accepted and unreviewed photos keep the
    model's text, edited ones get the edit, rejected ones are left out (they need alt text written by hand). Each
    JSON line says how the photo was reviewed; the generated listing is kept beside it for later reviews."""
    write_atomically(store.folder / GENERATED_LISTING, json_lines(store.rows))
    rows, records = [], []
    counts = dict.fromkeys(STATUSES, 0)
    for row, (photo, status, final) in zip(store.rows, store.reviewed(), strict=True):
        counts[status] += 1
        if final is None:
            continue
        rows.append({**row, "alt_text": final, "review": status})
        records.append(
            AltTextRecord(row["path"], final, row["generated"], photo.image.sha256, photo.width, photo.height)
        )
    # What alt_text.py wrote beside each record: the same generation settings on every row.
    settings = {key: value for key, value in next(iter(store.rows), {}).items() if key not in RECORD_FIELDS}
    write_csv(records, settings, store.folder / "alt_text.csv")
    write_atomically(store.folder / LISTING, json_lines(rows))
    return counts


def review_summary(store: ReviewStore) -> dict:
    """The photos' statuses now, and per model that wrote reviewed text (the latest decision on each photo it
    wrote for, including texts since written again): accept, edit and reject rates, and the mean character edit
    distance (Levenshtein) between its text and the final one (accepted: 0; rejected photos have no final text)."""
    statuses = dict.fromkeys(STATUSES, 0)
    for state in store.state():
        statuses[state["status"]] += 1
    latest = {(entry["model"], entry["resolved"], entry["sha256"]): entry for entry in store.decisions()}
    by_model = defaultdict(list)
    for (model, _, _), entry in latest.items():
        by_model[model].append(entry)
    return {
        "alt_text_dir": str(store.folder),
        "photos": len(store.photos),
        "reviewed": len(store.photos) - statuses["unreviewed"],
        "statuses": statuses,
        "models": {model: model_summary(entries) for model, entries in sorted(by_model.items())},
    }


def model_summary(entries: list[dict]) -> dict:
    counts = {
        decision: sum(entry["decision"] == decision for entry in entries)
        for decision in ("accepted", "edited", "rejected")
    }
    kept = [entry for entry in entries if entry["decision"] in KEPT]
    distances = [Levenshtein.distance(entry["generated"], entry["text"]) for entry in kept]
    relative = [d / max(len(e["generated"]), len(e["text"]), 1) for d, e in zip(distances, kept, strict=True)]
    edits = [d for d, entry in zip(distances, kept, strict=True) if entry["decision"] == "edited"]
    return {
        "reviewed": len(entries),
        **counts,
        **{
            f"{name}_rate": round(counts[decision] / len(entries), 4)
            for name, decision in (("accept", "accepted"), ("edit", "edited"), ("reject", "rejected"))
        },
        "mean_edit_distance": mean(distances),
        "mean_edit_distance_of_edits": mean(edits),
        "mean_relative_edit_distance": mean(relative),
    }


def mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def write_summary(store: ReviewStore) -> dict:
    summary = review_summary(store)
    write_atomically(store.folder / SUMMARY_FILE, json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    return summary
