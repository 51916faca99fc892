"""Write alt text for image files with a fine-tuned model (full model or LoRA/QLoRA adapter folder).

    python recipes/alt_text.py --model outputs/lora --images photos/ "uploads/*.jpg" --output_dir alt-text

Writes `alt_text.jsonl` and `alt_text.csv` (path, alt text, generation settings) and `index.html`, an
accessible gallery to review the result (every image with its alt, headings, page language). Alt text
is kept within `--max_chars` (125 by default, the usual screen-reader guidance) without cutting words.
Files that cannot be read as images (or for which the model writes nothing) are listed in `skipped.jsonl`
with the reason, and counted: no image gets an empty alt, which would mark it as decorative.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm
from trl import TrlParser

from alt_text_recipes.alt_text import (
    AltTextRecord,
    find_images,
    load_images,
    shorten,
    write_csv,
    write_gallery,
    write_jsonl,
)
from alt_text_recipes.config import GenerationArguments
from alt_text_recipes.errors import RecipeError, exit_on_user_error
from alt_text_recipes.generation import generate_alt_text
from alt_text_recipes.modeling import inference_device, load_trained


@dataclass
class AltTextArguments(GenerationArguments):
    images: list[str] = field(
        default_factory=list,
        metadata={"help": "Image files, folders (searched recursively) or glob patterns (quote them)."},
    )
    model: str | None = field(default=None, metadata={"help": "Model or adapter folder a recipe saved (or a Hub id)."})
    output_dir: str = field(default="alt-text", metadata={"help": "Where the JSONL, CSV and HTML files go."})
    max_chars: int = field(default=125, metadata={"help": "Longest alt text in characters; cut between words."})
    min_new_tokens: int = field(
        default=3,
        metadata={"help": "Shortest generated alt text, in tokens (an empty alt marks an image decorative)."},
    )
    batch_size: int = field(default=8, metadata={"help": "Images per generate call."})
    dtype: str = field(default="auto", metadata={"help": "dtype to load the model in: auto, float32, bfloat16."})
    title: str = field(default="Alt text review", metadata={"help": "Heading and title of the HTML page."})
    lang: str = field(default="en", metadata={"help": "Language of the alt text (the page's lang attribute)."})


def write_alt_text(args: AltTextArguments) -> list[AltTextRecord]:
    if args.model is None:
        raise RecipeError("pass --model: the folder a recipe saved (full model or adapter).")
    if not args.images:
        raise RecipeError("pass --images: image files, folders or glob patterns.")
    if args.max_chars < 20:
        raise RecipeError("--max_chars below 20 leaves no room for a description.")
    paths = find_images(args.images)
    model, processor = load_trained(args.model, args.dtype)
    model.to(inference_device())
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    records, skipped, sizes = [], [], {}
    for start in tqdm(range(0, len(paths), args.batch_size), desc="alt text", unit="batch"):
        loaded, unreadable = load_images(paths[start : start + args.batch_size])
        skipped += unreadable
        if not loaded:
            continue
        generated = generate_alt_text(
            model,
            processor,
            [image for _, image in loaded],
            **args.generation_settings().as_kwargs(),
            min_new_tokens=args.min_new_tokens,
        )
        for (path, image), text in zip(loaded, generated, strict=False):
            if not text.strip():  # never write an empty alt: screen readers would skip the image as decorative
                skipped.append((path, "the model wrote no text for it"))
                continue
            records.append(AltTextRecord(str(path), shorten(text, args.max_chars), text))
            sizes[str(path)] = image.size

    settings = {
        "model": args.model,
        **asdict(args.generation_settings()),
        "min_new_tokens": args.min_new_tokens,
        "max_chars": args.max_chars,
    }
    write_jsonl(records, settings, output_dir / "alt_text.jsonl")
    write_csv(records, settings, output_dir / "alt_text.csv")
    write_gallery(
        records,
        sizes,
        output_dir / "index.html",
        args.title,
        args.lang,
        args.model,
        asdict(args.generation_settings()),
    )
    with (output_dir / "skipped.jsonl").open("w", encoding="utf-8") as file:
        for path, reason in skipped:
            file.write(json.dumps({"path": str(path), "reason": reason}) + "\n")
    print(
        f"alt text for {len(records)} of {len(paths)} images -> {output_dir}/alt_text.jsonl, alt_text.csv, index.html"
    )
    if skipped:
        print(f"skipped {len(skipped)} file(s) (listed in {output_dir}/skipped.jsonl):")
        for path, reason in skipped[:5]:
            print(f"  {path}: {reason}")
    return records


def main() -> None:
    (args,) = TrlParser(AltTextArguments).parse_args_and_config()
    exit_on_user_error(write_alt_text, args)


if __name__ == "__main__":
    main()
