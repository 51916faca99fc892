"""Write alt text for image files with a fine-tuned model (full model or LoRA/QLoRA adapter folder).

    python recipes/alt_text.py --model_name_or_path outputs/lora --images photos/ "uploads/*.jpg" --output_dir alt-text
    accelerate launch --num_processes 4 recipes/alt_text.py --model_name_or_path outputs/lora --images photos/

Writes `alt_text.jsonl` and `alt_text.csv` (path, alt text, generation settings), `index.html`, an
accessible gallery to review the result (every image with its alt, headings, page language), and `summary.json`.
Alt text is held to the guidelines: an "image of"/"picture of" opening is dropped (`--drop_redundant_opening
false` keeps it) and the text is kept within `--alt_text_max_chars` (125 by default, the usual screen-reader
guidance) without cutting words; `summary.json` counts both and gives the guideline metrics before and after.
Files that cannot be read as images (or for which the model writes nothing) are listed in `skipped.jsonl`
with the reason, and counted: no image gets an empty alt, which would mark it as decorative.

Under `accelerate launch` each process writes alt text for its share of the images; the shares are merged
into the same files one process writes. Rerun on the same `--output_dir`, it writes only the images that are
new or changed since (`--overwrite` starts over): see alt_text_recipes/outputs/catalogue.py.
"""

import json
import os
import time
from dataclasses import asdict, dataclass, field

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from alt_text_recipes.data.errors import RecipeError, exit_on_user_error, require_folder, require_setting
from alt_text_recipes.data.logs import get_logger
from alt_text_recipes.outputs.alt_text_files import (
    AltTextRecord,
    enforce_guidelines,
    find_images,
    load_images,
    summary_of,
    write_atomically,
    write_csv,
    write_gallery,
    write_jsonl,
    write_skipped,
)
from alt_text_recipes.outputs.catalogue import CatalogueImage, CatalogueOutput, content_hash, share_of
from alt_text_recipes.outputs.generation import generate_alt_text
from alt_text_recipes.train.arguments import GenerationArguments, GuidelineArguments
from alt_text_recipes.train.modeling import load_for_inference
from alt_text_recipes.train.parallel import lone_launch_warning
from alt_text_recipes.train.settings_parser import parse_tool_args

logger = get_logger("alt_text")


@dataclass
class AltTextArguments(GenerationArguments, GuidelineArguments):
    images: list[str] = field(
        default_factory=list,
        metadata={"help": "Image files, folders (searched recursively) or glob patterns (quote them)."},
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={"aliases": ["--model"], "help": "Model or adapter folder a recipe saved (or a Hub id)."},
    )
    output_dir: str = field(default="alt-text", metadata={"help": "Where the JSONL, CSV and HTML files go."})
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Start over: forget the alt text already in --output_dir (by default a rerun writes only "
            "the images that are new or changed since)."
        },
    )
    drop_redundant_opening: bool = field(
        default=True,
        metadata={
            "help": "Drop an opening such as 'image of', 'a picture of', 'photo showing' from the alt text: "
            "screen readers already announce an image. false: write what the model generated."
        },
    )
    min_new_tokens: int = field(
        default=3,
        metadata={"help": "Shortest generated alt text, in tokens (an empty alt marks an image decorative)."},
    )
    batch_size: int = field(default=8, metadata={"help": "Images per generate call (per process)."})
    dtype: str = field(default="auto", metadata={"help": "dtype to load the model in: auto, float32, bfloat16."})
    quantize: str = field(
        default="none",
        metadata={
            "help": "int8: PyTorch dynamic int8 on the linear layers, for CPU servers (docs/alt-text.md, 'Alt "
            "text for a catalogue', says when it pays); none: as loaded.",
            "choices": ["none", "int8"],
        },
    )
    use_cpu: bool | None = field(
        default=None,
        metadata={"help": "Run on the CPU even where a GPU is visible (the default: the CPU only without one)."},
    )
    title: str = field(default="Alt text review", metadata={"help": "Heading and title of the HTML page."})
    lang: str = field(default="en", metadata={"help": "Language of the alt text (the page's lang attribute)."})

    def __post_init__(self) -> None:
        GenerationArguments.__post_init__(self)
        GuidelineArguments.__post_init__(self)
        require_setting(self.batch_size >= 1, "batch_size", self.batch_size, "give at least 1 image")
        require_setting(
            0 <= self.min_new_tokens <= self.generation_max_new_tokens,
            "min_new_tokens",
            self.min_new_tokens,
            f"give 0 up to --generation_max_new_tokens ({self.generation_max_new_tokens})",
        )
        require_folder("output_dir", self.output_dir)

    def settings(self) -> dict:
        """What the alt text depends on: written beside every record, and the same for a whole output folder."""
        return {
            "model": self.model_name_or_path,
            **asdict(self.generation_settings()),
            "min_new_tokens": self.min_new_tokens,
            "max_chars": self.alt_text_max_chars,  # the name catalogues written before --alt_text_max_chars hold
            "drop_redundant_opening": self.drop_redundant_opening,
            "dtype": self.dtype,
            "quantize": self.quantize,
        }


def check_arguments(args: AltTextArguments) -> None:
    if args.use_cpu is None:
        args.use_cpu = not torch.cuda.is_available()
    if args.model_name_or_path is None:
        raise RecipeError("pass --model_name_or_path: the folder a recipe saved (full model or adapter).")
    if not args.images:
        raise RecipeError("pass --images: image files, folders or glob patterns.")
    if args.alt_text_max_chars < 20:
        raise RecipeError("--alt_text_max_chars below 20 leaves no room for a description.")
    if args.quantize == "int8" and not args.use_cpu:
        raise RecipeError(
            "--quantize int8 uses PyTorch's CPU int8 kernels: add --use_cpu, or on a GPU use --dtype bfloat16."
        )
    if args.quantize == "int8" and args.dtype not in ("auto", "float32"):
        raise RecipeError("--quantize int8 quantizes float32 weights: leave --dtype at auto or float32.")


def write_share(
    args: AltTextArguments, images: list[CatalogueImage], output: CatalogueOutput, state: PartialState
) -> float:
    """Alt text for this process's images not written yet, appended to its log a batch at a time.
    Returns the seconds spent writing it (model loading excluded)."""
    model, processor = load_for_inference(args.model_name_or_path, args.dtype, args.quantize, state.device)
    started = time.perf_counter()
    log = output.open_log(state.process_index)
    batches = range(0, len(images), args.batch_size)
    for start in tqdm(batches, desc="alt text", unit="batch", disable=not state.is_main_process):
        batch = images[start : start + args.batch_size]
        loaded, unreadable = load_images([image.path for image in batch])
        entries = {path: {"skipped": reason} for path, reason in unreadable}
        if loaded:
            generated = generate_alt_text(
                model,
                processor,
                [picture for _, picture in loaded],
                **args.generation_settings().as_kwargs(),
                min_new_tokens=args.min_new_tokens,
            )
            for (path, picture), text in zip(loaded, generated, strict=True):
                # never write an empty alt: screen readers would skip the image as decorative
                entries[path] = (
                    {"alt_text": written_text(args, text), "generated": text, "size": picture.size}
                    if text.strip()
                    else {"skipped": "the model wrote no text for it"}
                )
        log.append([{"resolved": image.key[0], "sha256": image.sha256, **entries[image.path]} for image in batch])
    log.close()
    return time.perf_counter() - started


def written_text(args: AltTextArguments, generated: str) -> str:
    return enforce_guidelines(generated, args.alt_text_max_chars, args.drop_redundant_opening).text


def merge(args: AltTextArguments, images: list[CatalogueImage], output: CatalogueOutput) -> list[AltTextRecord]:
    """The deliverables, in the order of the image list, from every process's log."""
    written = output.written()
    missing = [str(image.path) for image in images if image.key not in written]
    if missing:
        raise RecipeError(
            f"no alt text was written for {len(missing)} image(s), e.g. {missing[0]}; rerun to add them."
        )
    records, skipped = [], []
    for image in images:
        entry = written[image.key]
        if "skipped" in entry:
            skipped.append((image.path, entry["skipped"]))
            continue
        width, height = entry["size"]
        records.append(
            AltTextRecord(str(image.path), entry["alt_text"], entry["generated"], image.sha256, width, height)
        )
    settings = args.settings()
    folder = output.output_dir
    write_jsonl(records, settings, folder / "alt_text.jsonl")
    write_csv(records, settings, folder / "alt_text.csv")
    write_gallery(
        records,
        folder / "index.html",
        args.title,
        args.lang,
        args.model_name_or_path,
        asdict(args.generation_settings()),
    )
    write_skipped(skipped, folder / "skipped.jsonl")
    summary = summary_of(records, len(skipped), args.alt_text_max_chars, args.drop_redundant_opening)
    write_atomically(folder / "summary.json", json.dumps(summary, indent=1))
    print(
        f"alt text for {len(records)} of {len(images)} images -> {folder}/alt_text.jsonl, alt_text.csv, index.html, "
        f"summary.json; {summary['cut']} cut to {args.alt_text_max_chars} characters, "
        f"{summary['redundant_opening_dropped']} redundant opening(s) dropped"
    )
    if skipped:
        print(f"skipped {len(skipped)} file(s) (listed in {folder}/skipped.jsonl):")
        for path, reason in skipped[:5]:
            print(f"  {path}: {reason}")
    return records


def joined_processes(use_cpu: bool) -> PartialState:
    """This process's place among those `accelerate launch` started. Processes that fail to form one group
    would each write every image, so that is an error."""
    state = PartialState(cpu=use_cpu)
    if warning := lone_launch_warning():
        logger.warning(warning)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if state.num_processes != launched:
        raise RecipeError(
            f"{launched} processes were launched but they did not join one group ({state.distributed_type}); on "
            "CPUs pass --use_cpu true."
        )
    return state


def write_alt_text(args: AltTextArguments) -> list[AltTextRecord]:
    """Every process: its share of the images, skipping those already written; the main process merges."""
    check_arguments(args)
    state = joined_processes(args.use_cpu)
    paths = find_images(args.images)
    output = CatalogueOutput(args.output_dir)
    if state.is_main_process:
        if args.overwrite:
            output.clear()
        output.adopt_settings(args.settings())
    state.wait_for_everyone()
    output.check_settings(args.settings())

    mine = [
        CatalogueImage(path, content_hash(path)) for path in share_of(paths, state.process_index, state.num_processes)
    ]
    written = output.written()
    to_write = [image for image in mine if image.key not in written]
    seconds = write_share(args, to_write, output, state) if to_write else 0.0
    shares = gather_object([{"images": mine, "written_now": len(to_write), "seconds": seconds}])
    state.wait_for_everyone()  # every log is complete
    if not state.is_main_process:
        return []
    images = {image.path: image for share in shares for image in share["images"]}
    records = merge(args, [images[path] for path in paths], output)
    report_speed(shares, len(paths))
    return records


def report_speed(shares: list[dict], total: int) -> None:
    written_now = sum(share["written_now"] for share in shares)
    already = total - written_now
    if not written_now:
        print(f"all {total} images were already written (--overwrite starts over)")
        return
    wall = max(share["seconds"] for share in shares)
    print(
        f"this run wrote {written_now} images ({already} already written) in {wall:.1f} s over {len(shares)} "
        f"process(es): {written_now / wall:.2f} images/s (model loading excluded)"
    )


def main() -> None:
    exit_on_user_error(lambda: write_alt_text(parse_tool_args(AltTextArguments)))


if __name__ == "__main__":
    main()
