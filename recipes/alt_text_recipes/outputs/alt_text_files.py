"""Alt text as deliverables: find the images, hold the text to the guidelines (short, no "image of" opening),
write JSONL, CSV, an accessible page and a summary."""

from __future__ import annotations

import csv
import glob
import html
import io
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from PIL import Image

from alt_text_recipes.data.errors import RecipeError
from alt_text_recipes.data.images import IMAGE_SUFFIXES, BadImage, open_checked
from alt_text_recipes.outputs.guidelines import drop_redundant_opening, guideline_scores, normalized

# Words that leave a shortened description hanging ("a bowl of soup with").
DANGLING_WORDS = {"a", "an", "the", "and", "or", "with", "of", "on", "in", "at", "to", "topped", "by", "for"}


@dataclass
class AltTextRecord:
    path: str
    alt_text: str
    generated: str  # before shortening
    sha256: str  # of the image file: an edited photo is a new image
    width: int
    height: int


def find_images(inputs: list[str]) -> list[Path]:
    """Image files named directly, inside folders (recursively) or matched by glob patterns; sorted, unique."""
    found: dict[str, Path] = {}
    for entry in inputs:
        path = Path(entry)
        if path.is_dir():
            candidates = [p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES]
        elif path.is_file():
            candidates = [path]
        else:
            candidates = [Path(p) for p in glob.glob(entry, recursive=True) if Path(p).is_file()]
            if not candidates:
                raise RecipeError(f"'{entry}' is not an image file, a folder or a glob pattern that matches files.")
        for candidate in candidates:
            found.setdefault(str(candidate.resolve()), candidate)
    if not found:
        raise RecipeError(f"no images (extensions {', '.join(sorted(IMAGE_SUFFIXES))}) found in {inputs}.")
    return sorted(found.values())


def load_images(paths: list[Path]) -> tuple[list[tuple[Path, Image.Image]], list[tuple[Path, str]]]:
    """Open each image as RGB (EXIF orientation applied); an unusable one is set aside with the reason."""
    loaded, skipped = [], []
    for path in paths:
        try:
            loaded.append((path, open_checked(path)))
        except BadImage as error:
            skipped.append((path, str(error)))
    return loaded, skipped


def shorten(text: str, max_chars: int) -> str:
    """At most `max_chars` characters, cut between words (never inside one), without a dangling last word;
    the first letter capitalised. A single word longer than the limit is the only case cut inside."""
    text = " ".join(text.split())
    if len(text) > max_chars:
        words = text[: max_chars + 1].split(" ")[:-1] or [text[:max_chars]]
        while len(words) > 1 and words[-1].lower().strip(",;:") in DANGLING_WORDS:
            words.pop()
        text = " ".join(words).rstrip(",;:")
    return text[:1].upper() + text[1:]


@dataclass(frozen=True)
class EnforcedAltText:
    text: str
    cut: bool  # it was longer than the limit
    opening_dropped: bool  # it opened with "image of"-style words, which were dropped


def enforce_guidelines(generated: str, max_chars: int, drop_opening: bool) -> EnforcedAltText:
    """What is written for a generated caption: without a redundant opening (with `drop_opening`), then within
    `max_chars`, cut between words (`shorten`)."""
    text = normalized(generated)
    kept = drop_redundant_opening(text) if drop_opening else text
    return EnforcedAltText(shorten(kept, max_chars), len(kept) > max_chars, kept != text)


def summary_of(records: list[AltTextRecord], skipped: int, max_chars: int, drop_opening: bool) -> dict:
    """summary.json: how many images were written or skipped, how many alt texts were cut or lost an opening, and
    the guideline metrics of what the model generated and of what was written."""
    # Recomputed from the generated text the logs keep: the same for every process and every rerun, since a
    # catalogue's settings (the limit, dropping openings) never change (CatalogueOutput.check_settings).
    enforced = [enforce_guidelines(record.generated, max_chars, drop_opening) for record in records]
    summary = {
        "images": len(records) + skipped,
        "written": len(records),
        "skipped": skipped,
        "alt_text_max_chars": max_chars,
        "drop_redundant_opening": drop_opening,
        "cut": sum(item.cut for item in enforced),
        "redundant_opening_dropped": sum(item.opening_dropped for item in enforced),
    }
    if records:
        summary["guidelines"] = {
            "generated": guideline_scores([record.generated for record in records], max_chars),
            "written": guideline_scores([record.alt_text for record in records], max_chars),
        }
    return summary


def write_atomically(path: Path, text: str) -> None:
    """Readers (and a rerun after a kill) see the old file or the new one, never half of it. The partial file's
    name is unique to this write, so two writers at once (threads of one server, or two servers) never replace
    each other's partial file."""
    partial = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")  # not mkstemp: it would make it 0600
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def write_jsonl(records: list[AltTextRecord], settings: dict, path: Path) -> None:
    lines = [
        json.dumps(
            {
                "path": record.path,
                "alt_text": record.alt_text,
                "generated": record.generated,
                "sha256": record.sha256,
                **settings,
            },
            ensure_ascii=False,
        )
        + "\n"
        for record in records
    ]
    write_atomically(path, "".join(lines))


def write_csv(records: list[AltTextRecord], settings: dict, path: Path) -> None:
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["path", "alt_text", *settings])
    for record in records:
        writer.writerow([record.path, record.alt_text, *settings.values()])
    write_atomically(path, text.getvalue())


def write_skipped(skipped: list[tuple[Path, str]], path: Path) -> None:
    write_atomically(path, "".join(json.dumps({"path": str(p), "reason": reason}) + "\n" for p, reason in skipped))


PAGE = """<!DOCTYPE html>
<html lang="{lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
  body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #1a1a1a; background: #fff; line-height: 1.5; }}
  ul {{ list-style: none; padding: 0; display: grid; gap: 1.5rem;
       grid-template-columns: repeat(auto-fill, minmax(16rem, 1fr)); }}
  img {{ max-width: 100%; height: auto; border: 1px solid #767676; }}
  h2 {{ font-size: 1rem; word-break: break-all; margin: 0.5rem 0 0.25rem; }}
  .alt {{ margin: 0; }}
  .meta {{ color: #505050; font-size: 0.875rem; }}
  :focus {{ outline: 3px solid #005fcc; }}
</style>
</head>
<body>
<header>
<h1>{title}</h1>
<p class="meta">{count} images. Model: {model}. Generation: {settings}. Each picture's alt attribute holds the
text shown under it; screen readers announce it once, from the picture.</p>
</header>
<main>
<ul>
{items}
</ul>
</main>
</body>
</html>
"""

ITEM = """<li>
<h2>{name}</h2>
<img src="{src}" alt="{alt}" width="{width}" height="{height}">
<p class="alt" aria-hidden="true">{alt}</p>
<p class="meta" aria-hidden="true">{length} characters</p>
</li>"""


def write_gallery(
    records: list[AltTextRecord],
    output: Path,
    title: str,
    lang: str,
    model: str,
    settings: dict,
) -> None:
    """An accessible review page: `lang`, headings, and every `<img>` with its alt text."""
    items = []
    for record in records:
        source = quote(Path(os.path.relpath(Path(record.path).resolve(), output.parent.resolve())).as_posix())
        items.append(
            ITEM.format(
                name=html.escape(Path(record.path).name),
                src=source,
                alt=html.escape(record.alt_text, quote=True),
                width=record.width,
                height=record.height,
                length=len(record.alt_text),
            )
        )
    write_atomically(
        output,
        PAGE.format(
            lang=html.escape(lang),
            title=html.escape(title),
            count=len(records),
            model=html.escape(model),
            settings=html.escape(json.dumps(settings)),
            items="\n".join(items),
        ),
    )
