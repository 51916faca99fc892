"""Command-line and YAML configuration shared by every recipe.

A recipe is parsed into three dataclasses, as TRL's example scripts do: `ScriptArguments` (data, prompt,
reporting), the recipe's `AltTextTrainingArguments` (every Trainer flag) and its `AltTextModelConfig` (trl's
`ModelConfig`: model, dtype, LoRA, quantization), whose field defaults are the project's and the recipe's
(training_arguments.py, registry.py). `--config preset.yaml` sets any of their fields; flags on the command line
override the file. What a preset says about itself (`title`, `recipe`, `launch`, `accelerate_config`) is not a
setting: it is read from the YAML into `ScriptArguments.preset`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from datasets import DatasetDict
from trl import ModelConfig

from alt_text_recipes.data.data_formats import DATA_FORMATS
from alt_text_recipes.data.errors import RecipeError, require_setting
from alt_text_recipes.data.images import MAX_ASPECT_RATIO, MAX_PIXELS
from alt_text_recipes.data.paths import EMBEDDED_DATASET
from alt_text_recipes.data.sources import load_caption_dataset
from alt_text_recipes.outputs.evaluation import GenerationSettings
from alt_text_recipes.outputs.guidelines import DEFAULT_MAX_CHARS
from alt_text_recipes.outputs.sentence_embeddings import BUNDLED_EMBEDDING_MODEL
from alt_text_recipes.train.registry import recipe_named
from alt_text_recipes.train.settings_parser import PresetInfo, SettingsParser, parse_checked


@dataclass
class DataArguments:
    """Where the captioned images come from (training, evaluation and the quality table alike)."""

    dataset_name: str = field(
        default=EMBEDDED_DATASET,
        metadata={
            "help": "The captioned photos, in any layout detected from what is there: a CSV/JSON/JSONL/Parquet "
            "file or glob (image paths or bytes + captions), a folder of photos holding such a file, "
            "COCO captions or Karpathy split JSON, chat rows (messages/conversations + images), an "
            "imagefolder or save_to_disk folder, or a Hub dataset id. --data_format declares which."
        },
    )
    data_format: str = field(
        default="auto",
        metadata={
            "help": "The layout of --dataset_name / the split files: 'auto' detects it from what is there (a folder "
            "that can be read two ways is an error naming both); or declare it: "
            + "; ".join(f"'{name}' {what}" for name, what in DATA_FORMATS.items() if name != "auto")
            + ". Declared, nothing is guessed, and data in another layout is an error saying which it is.",
            "choices": list(DATA_FORMATS),
        },
    )
    train_file: str | None = field(
        default=None,
        metadata={
            "help": "Training split from this file or glob (any layout of --dataset_name); with "
            "--validation_file / --test_file, replaces --dataset_name."
        },
    )
    validation_file: str | None = field(default=None, metadata={"help": "Validation split from this file or glob."})
    test_file: str | None = field(default=None, metadata={"help": "Test split from this file or glob."})
    validation_split_percentage: float = field(
        default=0,
        metadata={
            "help": "Data without a validation split: hold out this percentage of the training "
            "images for one (seeded by --seed; each image with all its captions in one split)."
        },
    )
    test_split_percentage: float = field(
        default=0,
        metadata={"help": "Data without a test split: hold out this percentage of the training images for one."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    image_column: str = field(default="image", metadata={"help": "Column holding the images."})
    caption_column: str = field(default="text", metadata={"help": "Column holding the alt text / captions."})
    on_bad_example: str = field(
        default="skip",
        metadata={
            "help": "An unreadable, missing, oversized or uncaptioned example: 'skip' it (counted, listed in "
            "data_report.json) or stop with an 'error'.",
            "choices": ["skip", "error"],
        },
    )
    clean_captions: bool = field(
        default=True,
        metadata={
            "help": "Clean user-contributed captions before training and scoring: URLs, @handles, emoji and "
            "trailing hashtag blocks removed, an inline #tag kept as its word, 'yum!!!' made 'yum!', line "
            "breaks and runs of spaces collapsed; a caption left with fewer than 3 words skips its row. The "
            "rows each rule changed, with before/after examples, go to the log and data_report.json. "
            "false: captions are used verbatim."
        },
    )
    max_image_pixels: int = field(default=MAX_PIXELS, metadata={"help": "Larger images are refused (memory)."})
    max_aspect_ratio: float = field(default=MAX_ASPECT_RATIO, metadata={"help": "Longer/narrower images are refused."})
    fast_inputs: bool = field(
        default=True,
        metadata={
            "help": "Decode (JPEG draft mode), EXIF-fix and resize training images in the DataLoader workers "
            "(--dataloader_num_workers, default: this process's CPU cores, at most 8) so the training "
            "step gets ready tensors. false: the plain path, the processor does it all per batch."
        },
    )
    cache_images: bool = field(
        default=True,
        metadata={
            "help": "With --fast_inputs: decode and resize the training images once per data set into the "
            "datasets cache (uint8 at the model's input size: 150 KB a photo at 224², reused by later "
            "runs) instead of every epoch. false for data sets whose cache would not fit on disk. "
            "Off with --streaming: a stream cannot be cached, its images are decoded and resized "
            "in the DataLoader workers as they are read."
        },
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read the training split as a stream (datasets IterableDataset): memory stays flat however "
            "large the collection. Sources: WebDataset .tar shards (a folder, or a glob such as "
            "'shards/train-*.tar'; KEY.jpg/png/webp with KEY.txt or KEY.json holding a caption), an "
            "imagefolder folder, a Hub id. Needs --max_steps (a stream has no length). Each process "
            "reads its own part; bad examples are checked as they are read and counted in "
            "data_report.json (all processes merged) when training ends. The evaluation split is read "
            "into memory: its first --max_eval_samples rows (all without it)."
        },
    )

    def __post_init__(self) -> None:
        require_setting(
            self.data_format in DATA_FORMATS, "data_format", self.data_format, f"give one of {list(DATA_FORMATS)}"
        )
        for flag in ("validation_split_percentage", "test_split_percentage"):
            value = getattr(self, flag)
            require_setting(0 <= value < 100, flag, value, "give a percentage from 0 up to (not including) 100")
        held_out = self.validation_split_percentage + self.test_split_percentage
        require_setting(
            held_out < 100,
            "validation_split_percentage",
            self.validation_split_percentage,
            f"with --test_split_percentage {self.test_split_percentage} it holds out {held_out:g}% of the "
            "training images, leaving none to train on",
        )
        require_setting(self.max_image_pixels >= 1, "max_image_pixels", self.max_image_pixels, "give at least 1")
        require_setting(
            self.max_aspect_ratio >= 1,
            "max_aspect_ratio",
            self.max_aspect_ratio,
            "give the longest side over the shortest, 1 or more",
        )

    def data_source(self) -> str:
        """What the splits are read from, as the model card names it."""
        return ", ".join(filter(None, (self.train_file, self.validation_file, self.test_file))) or self.dataset_name

    def load_splits(self, seed: int) -> DatasetDict:
        """Every split, with `seed` choosing the images held out by the split percentages."""
        return load_caption_dataset(
            self.dataset_name,
            self.image_column,
            self.caption_column,
            self.dataset_config,
            split_files={"train": self.train_file, "validation": self.validation_file, "test": self.test_file},
            validation_split_percentage=self.validation_split_percentage,
            test_split_percentage=self.test_split_percentage,
            seed=seed,
            data_format=self.data_format,
        )


@dataclass
class GenerationArguments:
    """How alt text is generated and scored: in evaluation during training, evaluate_captions.py and alt_text.py."""

    prompt: str = field(
        default="",
        metadata={
            "help": "BLIP-2: text before the caption (its captions need none). Chat families (Idefics, LLaVA): "
            "the instruction in the user turn, default 'Write alt text for this image.'. Never a "
            "training target."
        },
    )
    generation_max_new_tokens: int = field(default=40, metadata={"help": "Longest generated alt text, in tokens."})
    num_beams: int = field(default=1, metadata={"help": "Beams for generating alt text (1: greedy)."})

    def __post_init__(self) -> None:
        require_setting(
            self.generation_max_new_tokens >= 1,
            "generation_max_new_tokens",
            self.generation_max_new_tokens,
            "give at least 1 token",
        )
        require_setting(self.num_beams >= 1, "num_beams", self.num_beams, "give at least 1 (1: greedy)")

    def generation_settings(self) -> GenerationSettings:
        return GenerationSettings(self.prompt, self.generation_max_new_tokens, self.num_beams)


@dataclass
class GuidelineArguments:
    """The accessibility guidelines alt text is held to: measured in scoring, enforced by alt_text.py."""

    alt_text_max_chars: int = field(
        default=DEFAULT_MAX_CHARS,
        metadata={
            "aliases": ["--max_chars"],
            "help": "Longest alt text in characters (125: the usual screen-reader guidance). Scoring reports the "
            "share within it (guideline_within_limit); alt_text.py cuts its alt text to it between words.",
        },
    )

    def __post_init__(self) -> None:
        require_setting(
            self.alt_text_max_chars >= 1, "alt_text_max_chars", self.alt_text_max_chars, "give at least 1 character"
        )


@dataclass
class ScoringArguments(GuidelineArguments):
    embedding_model: str = field(
        default=BUNDLED_EMBEDDING_MODEL,
        metadata={
            "help": "Sentence-embedding model for the embedding distance: the bundled all-MiniLM-L6-v2 "
            f"('{BUNDLED_EMBEDDING_MODEL}'), a local sentence-transformers folder, or 'none'."
        },
    )


@dataclass
class ScriptArguments(DataArguments, GenerationArguments, ScoringArguments):
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str = field(default="validation", metadata={"help": "Split to evaluate on (optional)."})
    test_split: str = field(default="test", metadata={"help": "Split the closing examples come from."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N evaluation rows."})
    max_caption_tokens: int = field(default=64, metadata={"help": "Captions are truncated to this many tokens."})
    memory_report_steps: int = field(
        default=50, metadata={"help": "Print the memory breakdown at steps 0, 1 and every N steps (0: only 0 and 1)."}
    )
    show_examples: int = field(
        default=0, metadata={"help": "After training, print alt text for this many test images beside the reference."}
    )
    caption_metrics: bool = field(
        default=True,
        metadata={
            "help": "At each evaluation (--eval_strategy), generate alt text for the eval split and log "
            "BLEU-4, CIDEr, ROUGE-L, embedding distance and the guideline metrics (eval_cider, "
            "eval_guideline_within_limit, ...) beside the eval loss."
        },
    )
    caption_samples: int = field(
        default=4,
        metadata={
            "help": "At each evaluation with --caption_metrics, the first N evaluation images (the same ones each "
            "time) with the generated alt text beside the reference go to TensorBoard (images and a table, "
            "--report_to tensorboard) and W&B (a table, --report_to wandb). 0: none."
        },
    )
    save_final_model: bool = field(
        default=True,
        metadata={
            "help": "At the end, save the model (or adapter) with its processor and model card to --output_dir. "
            "false: keep only trainer_state.json (the loss curve and memory reports), for memory and "
            "speed checks that need no weights."
        },
    )
    scale_lr: str = field(
        default="none",
        metadata={
            "help": "Scale --learning_rate with the number of processes: linear (x N), sqrt (x sqrt N) or none. "
            "The given rate is the one tuned for one process.",
            "choices": ["linear", "sqrt", "none"],
        },
    )
    train_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Parts trained in full: any of vision, connector (BLIP-2: Q-Former, query tokens and "
            "projection; Idefics2: perceiver resampler and projection; LLaVA: projector), language. "
            "Everything else is frozen. Default: all three for full_ft.py; none for lora.py/qlora.py, "
            "where the adapters train and a part named here trains in full beside them (stored in "
            "the adapter folder). Space- or comma-separated."
        },
    )
    device_map: str | None = field(
        default=None,
        metadata={
            "help": "Model parallel on one machine: split the layers over its GPUs with 'auto', 'balanced', "
            "'sequential', or a JSON map {module: device}. No data parallelism; launch with python."
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Run Python code from the model's repository. Off unless you ask: it runs with your permissions."
        },
    )

    # Not settings (no flags): set by `parse_recipe_args` from the recipe that runs and the preset's YAML.
    recipe: str | None = field(default=None, init=False)
    preset: PresetInfo = field(default_factory=PresetInfo, init=False)

    def with_changes(self, **changes: Any) -> ScriptArguments:
        """A copy with `changes`, keeping what the run is (`recipe`, `preset`), which `dataclasses.replace` resets."""
        changed = dataclasses.replace(self, **changes)
        changed.recipe, changed.preset = self.recipe, self.preset
        return changed

    def __post_init__(self) -> None:
        DataArguments.__post_init__(self)
        GenerationArguments.__post_init__(self)
        ScoringArguments.__post_init__(self)
        for flag in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, flag)
            require_setting(value is None or value >= 1, flag, value, "give at least 1 row (leave it out for all)")
        require_setting(
            self.max_caption_tokens >= 1, "max_caption_tokens", self.max_caption_tokens, "give at least 1 token"
        )
        for flag, expected in (
            ("memory_report_steps", "give 0 or more"),
            ("show_examples", "give a number of images, 0 for none"),
            ("caption_samples", "give a number of images, 0 for none"),
        ):
            require_setting(getattr(self, flag) >= 0, flag, getattr(self, flag), expected)


def check_lora_settings(model_args: ModelConfig) -> None:
    """trl's ModelConfig checks none of these; a rank of 0 would fail deep inside peft."""
    require_setting(model_args.lora_r >= 1, "lora_r", model_args.lora_r, "give a rank of at least 1")
    require_setting(model_args.lora_alpha > 0, "lora_alpha", model_args.lora_alpha, "give a positive scale")
    require_setting(
        0 <= model_args.lora_dropout < 1, "lora_dropout", model_args.lora_dropout, "give a probability in [0, 1)"
    )


def make_parser(recipe: str | None, extra: tuple[type, ...] = ()) -> SettingsParser:
    """The parser of recipe `recipe`'s settings (None: the project's defaults alone), plus `extra` dataclasses."""
    chosen = recipe_named(recipe)
    return SettingsParser((ScriptArguments, chosen.training, chosen.model, *extra))


def parse_recipe_args(recipe: str | None, args: list[str] | None = None, extra: tuple[type, ...] = ()) -> tuple:
    """Parse (ScriptArguments, TrainingArguments, ModelConfig, *extra) for recipe `recipe` (None: the project's
    defaults alone)."""
    parser = make_parser(recipe, extra)
    parsed = parse_checked(parser, args)
    script_args, training_args, model_args = parsed[:3]
    script_args.recipe, script_args.preset = recipe, parser.preset
    if parser.preset.recipe and recipe and parser.preset.recipe != recipe:
        raise RecipeError(f"this preset is for recipes/{parser.preset.recipe}.py, not recipes/{recipe}.py.")
    if script_args.streaming and training_args.max_steps <= 0:
        raise RecipeError(
            "--streaming needs --max_steps: a streamed data set has no length, so epochs cannot be "
            "counted. Set the number of optimizer steps to train, e.g. --max_steps 1000."
        )
    if model_args.use_peft:
        check_lora_settings(model_args)
    if model_args.load_in_4bit or model_args.load_in_8bit:
        if not model_args.use_peft:
            raise RecipeError(
                "a quantized base (--load_in_4bit / --load_in_8bit) can only be trained with LoRA "
                "(--use_peft); use recipes/qlora.py."
            )
    return parsed
