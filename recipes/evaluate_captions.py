"""Score models and adapters side by side on a caption split, with real generation.

    python recipes/evaluate_captions.py --models base=data/models/tiny-blip2-opt lora=outputs/tiny-lora \
        --split test --output_file outputs/scores.json

Prints BLEU-4, CIDEr, ROUGE-L, the embedding distance (0 is best) and the guideline metrics (share within
`--alt_text_max_chars`, with a redundant "image of" opening, with hashtags/URLs/handles/emoji; mean length) per
model, then a few images' reference beside each model's alt text; `--output_file` gets the scores, settings and
every caption as JSON.
Rows go through the training data checks first (`--on_bad_example`, `--max_image_pixels`, `--max_aspect_ratio`,
`--clean_captions`: references cleaned as training captions are); rows of the same image (COCO: one per
reference) are captioned once and scored against all their references.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from alt_text_recipes.data.checks import apply_policy, check_split
from alt_text_recipes.data.errors import exit_on_user_error, require_folder, require_setting
from alt_text_recipes.data.sources import select_split
from alt_text_recipes.outputs.evaluation import examples_text, parse_named_models, score_models, scores_table
from alt_text_recipes.train.arguments import DataArguments, GenerationArguments, ScoringArguments
from alt_text_recipes.train.families import TWINS
from alt_text_recipes.train.settings_parser import parse_tool_args


@dataclass
class EvaluationArguments(DataArguments, GenerationArguments, ScoringArguments):
    models: list[str] = field(
        default_factory=lambda: [TWINS["blip2-opt"].folder],
        metadata={"help": "Model or adapter folders (or Hub ids) to score, each as PATH or NAME=PATH."},
    )
    split: str = field(default="test", metadata={"help": "Split to score on."})
    max_samples: int | None = field(default=None, metadata={"help": "Score only the first N rows of the split."})
    batch_size: int = field(default=16, metadata={"help": "Images per generate call."})
    dtype: str = field(default="auto", metadata={"help": "dtype to load the models in: auto, float32, bfloat16."})
    examples: int = field(default=3, metadata={"help": "Images whose alt text is printed beside the reference."})
    seed: int = field(
        default=42,
        metadata={"help": "The training run's --seed, so that the split percentages hold out the same images it did."},
    )
    output_file: str | None = field(
        default=None, metadata={"help": "Write scores, settings and captions here (JSON)."}
    )

    def __post_init__(self) -> None:
        DataArguments.__post_init__(self)
        GenerationArguments.__post_init__(self)
        ScoringArguments.__post_init__(self)
        require_setting(self.batch_size >= 1, "batch_size", self.batch_size, "give at least 1 image")
        require_setting(
            self.max_samples is None or self.max_samples >= 1,
            "max_samples",
            self.max_samples,
            "give at least 1 row (leave it out for all)",
        )
        require_setting(self.examples >= 0, "examples", self.examples, "give a number of images, 0 for none")
        if self.output_file:
            require_folder("output_file", self.output_file, folder=Path(self.output_file).parent)


def evaluate(args: EvaluationArguments) -> dict:
    models = parse_named_models(args.models)
    splits = args.load_splits(args.seed)
    # The checks training applies, before any model loads: bad rows skipped and counted, or an error; the
    # references cleaned as training captions are (--clean_captions), so a model trained on cleaned captions
    # is scored against references like the ones it learnt from.
    dataset, data_report = check_split(
        select_split(splits, args.split, args.max_samples),
        args.split,
        max_pixels=args.max_image_pixels,
        max_aspect_ratio=args.max_aspect_ratio,
        caption_lists=True,
        clean_captions=args.clean_captions,
    )
    apply_policy([data_report], args.on_bad_example)
    print(
        f"scoring {len(models)} model(s) on the '{args.split}' split of {args.data_source()} ({len(dataset)} rows)",
        flush=True,
    )
    results = score_models(
        models,
        dataset,
        args.generation_settings(),
        args.batch_size,
        args.embedding_model,
        args.dtype,
        args.alt_text_max_chars,
    )
    print("\n" + scores_table(results) + "\n\n" + examples_text(results, args.examples))
    references = next(iter(results.values())).references
    report = {
        "dataset": args.data_source(),
        "split": args.split,
        "images": len(references),
        "data_check": {
            "rows": data_report.rows,
            "kept": data_report.kept,
            "skipped": len(data_report.problems),
            "caption_cleaning": asdict(data_report.caption_cleaning),
        },
        "generation": asdict(args.generation_settings()),
        "alt_text_max_chars": args.alt_text_max_chars,
        "models": {
            name: {"path": models[name], "scores": result.scores, "captions": result.captions}
            for name, result in results.items()
        },
        "references": references,
    }
    if args.output_file:
        Path(args.output_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_file).write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.output_file}")
    return report


def main() -> None:
    exit_on_user_error(lambda: evaluate(parse_tool_args(EvaluationArguments)))


if __name__ == "__main__":
    main()
