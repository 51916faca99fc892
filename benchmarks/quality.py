"""The quality table: does fine-tuning teach the embedded tiny BLIP-2 (OPT) to write food alt text?

    python benchmarks/quality.py                      # trains every preset, scores all, writes the table
    python benchmarks/quality.py --skip_training      # re-score the models already in outputs/quality/

Trains the presets in `recipes/configs/quality/` with the commands a user types (full fine-tuning,
LoRA, QLoRA and two LoRA ablations), then scores the untuned base and each result on the test split,
whose dish/topping combinations never occur in training, with real generation (greedy): the caption metrics and,
beside them, the accessibility-guideline metrics (share within 125 characters, share with a redundant "image of"
opening, share with hashtags/URLs/handles/emoji, mean length; docs/alt-text.md, "Guideline metrics"). Writes
results.json and results.md to --out_dir (default benchmarks/results/quality-cpu) and checks the bars:
CIDEr of fine-tuning >= 3x the base's, LoRA >= 90% of full fine-tuning's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from alt_text_recipes.data.paths import EMBEDDED_DATASET
from alt_text_recipes.data.sources import load_caption_dataset, select_split
from alt_text_recipes.outputs.evaluation import GenerationSettings, examples_text, score_models, scores_table
from alt_text_recipes.outputs.guidelines import DEFAULT_MAX_CHARS
from alt_text_recipes.train.families import TWINS

REPO_ROOT = Path(__file__).resolve().parents[1]

# name -> (recipe, what it is); the preset is recipes/configs/quality/<name>.yaml
RUNS = {
    "full_ft": ("full_ft", "full fine-tuning, every weight"),
    "lora": ("lora", "LoRA r16 on q_proj/v_proj + trainable embeddings and output layer"),
    "qlora": ("qlora", "QLoRA: as lora, over a 4-bit NF4 base"),
    "lora_attention_only": ("lora", "ablation: LoRA r16 on q_proj/v_proj only (the recipe default)"),
    "lora_all_linear": ("lora", "ablation: LoRA r16 on every linear layer + trainable embeddings and output layer"),
}


def train(name: str, recipe: str, output_root: Path) -> float:
    command = [
        sys.executable,
        str(REPO_ROOT / "recipes" / f"{recipe}.py"),
        "--config",
        str(REPO_ROOT / "recipes/configs/quality" / f"{name}.yaml"),
        "--output_dir",
        str(output_root / name),
    ]
    print("$ " + " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(
        command,
        check=True,
        cwd=REPO_ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models_dir", default="outputs/quality", help="where the trained models go")
    parser.add_argument("--out_dir", default="benchmarks/results/quality-cpu", help="where the table goes")
    parser.add_argument("--skip_training", action="store_true", help="score the models already in --models_dir")
    args = parser.parse_args()
    models_dir, out_dir = REPO_ROOT / args.models_dir, REPO_ROOT / args.out_dir
    started = time.perf_counter()

    train_seconds = {}
    if not args.skip_training:
        for name, (recipe, _) in RUNS.items():
            train_seconds[name] = train(name, recipe, models_dir)
    test_split = select_split(load_caption_dataset(EMBEDDED_DATASET), "test")
    generation = GenerationSettings(max_new_tokens=40, num_beams=1)
    results = score_models(
        {"base (untuned)": TWINS["blip2-opt"].folder, **{name: str(models_dir / name) for name in RUNS}},
        test_split,
        generation,
        batch_size=25,
        dtype="float32",
    )

    base_cider, full_cider = results["base (untuned)"].scores["cider"], results["full_ft"].scores["cider"]
    bars = {
        "fine-tuning CIDEr / base CIDEr (bar >= 3)": min(
            results[n].scores["cider"] for n in ("full_ft", "lora", "qlora")
        )
        / base_cider,
        "LoRA CIDEr / full fine-tuning CIDEr (bar >= 0.9)": results["lora"].scores["cider"] / full_cider,
        "QLoRA CIDEr / full fine-tuning CIDEr": results["qlora"].scores["cider"] / full_cider,
    }
    table = scores_table(results)
    what = "\n".join(
        f"- `{name}`: {description} (`recipes/configs/quality/{name}.yaml`)" for name, (_, description) in RUNS.items()
    )
    markdown = (
        f"{table}\n\n"
        + "\n".join(f"- {label}: {value:.2f}" for label, value in bars.items())
        + f"\n\n{what}\n\nTest split of {EMBEDDED_DATASET}: {len(test_split)} images, greedy decoding, "
        f"up to {generation.max_new_tokens} new tokens. guideline_*: share within {DEFAULT_MAX_CHARS} characters, "
        "share opening with 'image of'-style words, share with hashtags/URLs/handles/emoji (lower is better), "
        "mean length in characters. Training seconds: "
        + ", ".join(f"{name} {seconds:.0f}" for name, seconds in train_seconds.items())
        + f". Command: `python benchmarks/quality.py`.\n\nExamples:\n\n```\n{examples_text(results, 3)}\n```\n"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.md").write_text(markdown)
    (out_dir / "results.json").write_text(
        json.dumps(
            {
                "scores": {name: result.scores for name, result in results.items()},
                "ratios": bars,
                "train_seconds": train_seconds,
                "captions": {name: result.captions for name, result in results.items()},
                "references": results["full_ft"].references,
            },
            indent=2,
        )
    )
    print("\n" + markdown)
    print(f"wrote {out_dir}/results.md and results.json in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
