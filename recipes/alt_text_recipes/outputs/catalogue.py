"""Alt text for a whole catalogue: each process writes its share to its own append-only log, a rerun skips
what is already written, and the logs are merged into the deliverables in the order of the image list.

An image is known by its resolved path and the SHA-256 of its bytes, so an edited photo is written again.
Each process appends whole lines with one write, flushed to disk per batch; a process killed mid-write can
leave at most one torn last line, which the next run cuts off its own log before appending (and which
readers ignore), so an interruption costs only the batch that was being written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from alt_text_recipes.data.errors import RecipeError
from alt_text_recipes.outputs.alt_text_files import write_atomically

PARTS_FOLDER = "parts"
SETTINGS_FILE = "settings.json"
DELIVERABLES = ("alt_text.jsonl", "alt_text.csv", "index.html", "skipped.jsonl", "summary.json")


@dataclass(frozen=True)
class CatalogueImage:
    path: Path
    sha256: str

    @cached_property  # resolving a path is a system call per component; a catalogue asks for each key often
    def key(self) -> tuple[str, str]:
        return str(self.path.resolve()), self.sha256


def content_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def share_of(paths: list[Path], process_index: int, num_processes: int) -> list[Path]:
    """Every `num_processes`-th image from `process_index` on: the shares stay even when a rerun resumes,
    since every process got as far into its share as the others."""
    return paths[process_index::num_processes]


class CatalogueOutput:
    """The output folder of one catalogue job: its settings, the processes' logs, the merged files."""

    def __init__(self, output_dir: str | Path):
        self.output_dir = Path(output_dir)
        self.parts = self.output_dir / PARTS_FOLDER

    def clear(self) -> None:
        """`--overwrite`: forget everything written so far."""
        shutil.rmtree(self.parts, ignore_errors=True)
        for name in DELIVERABLES:
            (self.output_dir / name).unlink(missing_ok=True)

    def adopt_settings(self, settings: dict) -> None:
        """The settings of the first run become the folder's (the main process writes them)."""
        path = self.parts / SETTINGS_FILE
        if not path.exists():
            self.parts.mkdir(parents=True, exist_ok=True)
            write_atomically(path, json.dumps(settings, indent=1))
        self.check_settings(settings)

    def check_settings(self, settings: dict) -> None:
        """A rerun with other settings would mix two models' (or two prompts') alt text in one catalogue."""
        earlier = json.loads((self.parts / SETTINGS_FILE).read_text())
        changed = {key: (earlier.get(key), value) for key, value in settings.items() if earlier.get(key) != value}
        if changed:
            described = "; ".join(f"{key}: {old!r} then, {new!r} now" for key, (old, new) in changed.items())
            raise RecipeError(
                f"{self.output_dir} holds alt text written with other settings ({described}). Pass "
                "--overwrite to start over, or choose another --output_dir."
            )

    def log_of(self, process_index: int) -> Path:
        return self.parts / f"process-{process_index}.jsonl"

    def written(self) -> dict[tuple[str, str], dict]:
        """Every complete entry of every process's log, by image key (a later entry wins)."""
        entries: dict[tuple[str, str], dict] = {}
        for log in sorted(self.parts.glob("process-*.jsonl")):
            for entry in read_log(log):
                entries[(entry["resolved"], entry["sha256"])] = entry
        return entries

    def open_log(self, process_index: int) -> "AppendLog":
        self.parts.mkdir(parents=True, exist_ok=True)
        return AppendLog(self.log_of(process_index))


class AppendLog:
    """One process's log: whole JSON lines, appended and flushed to disk a batch at a time."""

    def __init__(self, path: Path):
        self.path = path
        cut_torn_tail(path)
        self.file = path.open("a", encoding="utf-8")

    def append(self, entries: list[dict]) -> None:
        if entries:
            self.file.write("".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in entries))
            self.file.flush()
            os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def read_log(path: Path) -> list[dict]:
    """The complete entries of an append-only log, in the order written; a torn last line (a process killed
    while writing it) is ignored, and so is a missing log (nothing written yet)."""
    if not path.exists():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


def cut_torn_tail(path: Path) -> None:
    """Drop a last line without its newline (the process was killed while writing it)."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as file:
            file.truncate(data.rfind(b"\n") + 1)
