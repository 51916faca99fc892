"""Editors' reviews of an alt-text folder (what recipes/alt_text.py wrote): the photos it lists with the alt text
the model wrote for each, and every decision taken on them (accepted, edited, rejected), kept in `reviews.jsonl`.

Nothing an editor does is lost: each decision is one JSON line appended and flushed to disk as it is taken (the
catalogue's `AppendLog`), under a lock that the threads of one server and the servers of one folder share, so
two tabs or two editors at once never interleave; a torn last line (a killed process) is ignored as the catalogue
ignores it. Read back, the last decision on a photo wins.

A photo is known by its catalogue key, the resolved path and the SHA-256 of its bytes, and a decision holds the
text it was taken on: a regenerated catalogue keeps the reviews of unchanged photos, while an edited photo (a new
key) or a photo whose alt text was written again (another text) is unreviewed again.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from alt_text_recipes.data.errors import RecipeError
from alt_text_recipes.outputs.catalogue import AppendLog, CatalogueImage, CatalogueOutput, cut_torn_tail, read_log

LISTING = "alt_text.jsonl"
# The listing as alt_text.py wrote it, kept when --publish_reviewed rewrites alt_text.jsonl with the reviewed text.
GENERATED_LISTING = "alt_text.generated.jsonl"
REVIEWS_FILE = "reviews.jsonl"
DECISIONS = ("accepted", "edited", "rejected")
STATUSES = ("unreviewed", *DECISIONS)


class PhotoRefused(RecipeError):
    """A request for a file that is not one of the folder's photos (or leads out of the photos' folder)."""


class PhotoNotListed(PhotoRefused):
    """A path under the photos' folder that the folder does not list."""


class ReviewConflict(RecipeError):
    """A decision on a photo the folder no longer lists as it was (changed since the page was loaded)."""


@dataclass(frozen=True)
class ListedPhoto:
    image: CatalogueImage  # the path as listed (made absolute; links kept) and the SHA-256 of its bytes
    name: str  # its path under the photos' folder: how the page names and asks for it
    alt_text: str  # what the model wrote (cut to --max_chars), from the catalogue
    model: str  # the model or adapter that wrote it
    prompt: str
    width: int
    height: int


def generated_listing(folder: Path) -> list[dict]:
    """The rows of the listing alt_text.py wrote: alt_text.jsonl, or, once --publish_reviewed has rewritten it
    (its rows then say how each was reviewed), the copy of the generated one kept beside it."""
    listing = folder / LISTING
    if not listing.is_file():
        raise RecipeError(
            f"{folder} holds no {LISTING}: write alt text first (recipes/alt_text.py --output_dir {folder})."
        )
    rows = read_log(listing)
    copy = folder / GENERATED_LISTING
    if copy.is_file() and all("review" in row for row in rows):
        return read_log(copy)
    return rows


def listed_photos(folder: Path) -> tuple[list[ListedPhoto], Path, list[dict]]:
    """The folder's photos in the order of its listing, the folder that holds them all, and the listing's rows.
    A relative path in the listing is relative to the folder alt_text.py was run in, as in its index.html."""
    rows = generated_listing(folder)
    written = CatalogueOutput(folder).written()
    paths = [Path(os.path.abspath(row["path"])) for row in rows]
    root = Path(os.path.commonpath([path.parent for path in paths])) if paths else folder
    photos = []
    for row, path in zip(rows, paths, strict=True):
        image = CatalogueImage(path, row["sha256"])
        entry = written.get(image.key)
        if entry is None or "alt_text" not in entry:
            raise RecipeError(
                f"{folder}/parts holds no alt text for {row['path']} as it is now (SHA-256 {row['sha256'][:12]}): "
                "run review.py from the folder alt_text.py was run in (the listing's paths are relative to it), "
                "or rerun alt_text.py to bring the folder up to date."
            )
        width, height = entry["size"]
        name = path.relative_to(root).as_posix()
        model, prompt = row.get("model") or "", row.get("prompt", "")
        photos.append(ListedPhoto(image, name, entry["alt_text"], model, prompt, width, height))
    return photos, root, rows


class LockedAppendLog(AppendLog):
    """The catalogue's append-only log, shared: every append (and the cut of a torn tail when it opens) holds an
    exclusive lock on a lock file beside it, which every process writing to the log takes too."""

    def __init__(self, path: Path):
        self.lock_file = path.with_name(f".{path.name}.lock").open("a")
        with self.locked():
            super().__init__(path)

    @contextmanager
    def locked(self) -> Iterator[None]:
        fcntl.flock(self.lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self.lock_file, fcntl.LOCK_UN)

    def append(self, entries: list[dict]) -> None:
        with self.locked():
            cut_torn_tail(self.path)  # another process killed mid-write: our line must not join its torn one
            super().append(entries)

    def close(self) -> None:
        super().close()
        self.lock_file.close()


class ReviewStore:
    """One alt-text folder under review: its photos, the decisions on them, and the safe way to its files."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise RecipeError(f"--alt_text_dir {folder}: no such folder (the --output_dir alt_text.py wrote).")
        self.photos, self.root, self.rows = listed_photos(self.folder)
        self.by_name = {photo.name: photo for photo in self.photos}
        self.reviews = self.folder / REVIEWS_FILE
        self.lock = threading.Lock()  # the file lock does not exclude threads that share its descriptor
        self.log: LockedAppendLog | None = None

    def decisions(self) -> list[dict]:
        """Every decision in the reviews file, in the order taken (a torn last line ignored)."""
        return read_log(self.reviews)

    def latest(self) -> dict[tuple[str, str], dict]:
        """The last decision on each photo key."""
        return {(entry["resolved"], entry["sha256"]): entry for entry in self.decisions()}

    def state(self) -> list[dict]:
        """Each photo as the page shows it, with its status now."""
        latest = self.latest()
        return [describe(photo, latest.get(photo.image.key)) for photo in self.photos]

    def reviewed(self) -> list[tuple[ListedPhoto, str, str | None]]:
        """(photo, status, final text) for each photo: the model's text accepted, the edit, or None if rejected."""
        return [
            (photo, state["status"], state["text"]) for photo, state in zip(self.photos, self.state(), strict=True)
        ]

    def record(self, name: str, sha256: str, decision: str, text: str | None = None) -> dict:
        """Save an editor's decision on the photo `name` (as it was when the page showed it) at once, and return
        the photo as the page shows it now. An edit identical to the model's text is an accept."""
        photo = self.by_name.get(name)
        if photo is None or photo.image.sha256 != sha256:
            raise ReviewConflict(f"{name} is not in this folder as the page showed it: reload the page.")
        if decision not in DECISIONS:
            raise RecipeError(f"decision {decision!r}: give one of {', '.join(DECISIONS)}.")
        final = {"accepted": photo.alt_text, "rejected": None}.get(decision, " ".join((text or "").split()))
        if decision == "edited" and not final:
            raise RecipeError("an empty alt text would mark the photo as decorative: reject it instead.")
        if final == photo.alt_text:
            decision = "accepted"
        entry = {
            "resolved": photo.image.key[0],
            "sha256": sha256,
            "path": name,
            "decision": decision,
            "text": final,
            "generated": photo.alt_text,
            "model": photo.model,
            "at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        }
        with self.lock:
            if self.log is None:
                self.log = LockedAppendLog(self.reviews)
            self.log.append([entry])
        return describe(photo, entry)

    def photo_file(self, name: str) -> Path:
        """The file of the listed photo `name`; anything else (a path with '..', an absolute path, a file the
        folder does not list, a link leading out of the photos' folder) is refused."""
        parts = PurePosixPath(name).parts
        if not name or name.startswith(("/", "\\")) or ".." in parts or "\\" in name:
            raise PhotoRefused(f"{name!r} is not a photo path under the photos' folder.")
        photo = self.by_name.get(name)
        if photo is None:
            raise PhotoNotListed(f"{name!r} is not one of the photos this folder lists.")
        real, root = os.path.realpath(photo.image.path), os.path.realpath(self.root)
        if os.path.commonpath([real, root]) != root:
            raise PhotoRefused(f"{name!r} leads out of the photos' folder.")
        return Path(real)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


def describe(photo: ListedPhoto, decision: dict | None) -> dict:
    """A photo as the page shows it. A decision applies only to the text it was taken on."""
    current = decision if decision and decision["generated"] == photo.alt_text else None
    return {
        "name": photo.name,
        "sha256": photo.image.sha256,
        "generated": photo.alt_text,
        "model": photo.model,
        "width": photo.width,
        "height": photo.height,
        "status": current["decision"] if current else "unreviewed",
        "text": current["text"] if current else photo.alt_text,
        "note": "its alt text was written again since it was reviewed" if decision and not current else "",
    }
