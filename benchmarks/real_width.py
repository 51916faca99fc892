"""The memory estimator against one measured training step at real width, on CPU, part by part.

    python benchmarks/real_width.py                                  # every family and case (~10 min, 2 cores)
    python benchmarks/real_width.py --models Salesforce/blip2-opt-2.7b --out /tmp/rw

Each shipped real config (BLIP-2 OPT-2.7B and Flan-T5-XL, LLaVA-1.5-7B, Idefics2-8B) is built with its real
widths, vocabulary and sequence lengths but `--layers` layers per stack and random weights; each fp32 case (full
fine-tuning with AdamW and 8-bit AdamW, LoRA; activation checkpointing on and off) runs one optimizer step
through its recipe, and the estimate for the same reduced config stands beside what was measured:
parameters, gradients, optimizer state and the activations each stack saves
(recipes/alt_text_recipes/memory/measured_step.py).
bf16 cases (bf16-mixed, bf16 weights, QLoRA with bf16 compute) run on the tiny twins instead: this CPU has no
bf16 instructions and multiplies bf16 matrices at under 0.1 GFLOP/s (fp32: ~20), so a real-width bf16 step
takes hours here; on a GPU, `pytest -m gpu` measures them at real width.
Writes results.md (the table, the worst part of each case) and results.json to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from alt_text_recipes.memory.measured_step import Case, measure_cases, table
from alt_text_recipes.train import families

REPO_ROOT = Path(__file__).resolve().parents[1]

MODELS = [
    "Salesforce/blip2-opt-2.7b",
    "Salesforce/blip2-flan-t5-xl",
    "llava-hf/llava-1.5-7b-hf",
    "HuggingFaceM4/idefics2-8b",
]
CASES = [
    Case("full_ft", "float32", False, False, "adamw_torch"),
    Case("full_ft", "float32", False, True),
    Case("lora", "float32", False, False),
    Case("lora", "float32", False, True),
]
TWINS = [twin.folder for twin in families.TWINS.values()]  # every family's twin
TWIN_CASES = [
    Case("full_ft", "float32", True, False, "adamw_torch"),
    Case("full_ft", "bfloat16", True, True),
    Case("lora", "bfloat16", True, True),
    Case("qlora", "bfloat16", True, False),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--layers", type=int, default=1, help="layers per stack")
    parser.add_argument("--twins", nargs="*", default=TWINS, help="tiny twins for the bf16 cases")
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/real-width"))
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks/results/real-width-cpu")
    args = parser.parse_args()
    comparisons, started = [], time.perf_counter()
    for model in args.models:
        # full fine-tuning of the 7-8B families' reduced models does not fit this machine's memory in fp32
        cases = CASES if "blip2" in model else [case for case in CASES if case.recipe != "full_ft"]
        comparisons += measure_cases(model, cases, args.work_dir, args.layers)
        print(table(comparisons[-len(cases) :]), flush=True)
    for twin in args.twins:
        comparisons += measure_cases(twin, TWIN_CASES, args.work_dir)
        print(table(comparisons[-len(TWIN_CASES) :]), flush=True)
    worst = [(c.case, *c.worst()) for c in comparisons]
    command = "python benchmarks/real_width.py " + " ".join(sys.argv[1:])
    lines = [
        f"Command: `{command}` ({time.perf_counter() - started:.0f} s, CPU, {args.layers} layer(s) per stack "
        "at real width; bf16 cases on the tiny twins; batch 2)",
        "",
        "Worst part of each case (measured ÷ estimated; inf: measured where nothing was estimated):",
        "",
        "| case | part | ratio |",
        "|---|---|---|",
    ]
    lines += [f"| {case} | {part} | {ratio:.3f} |" for case, part, ratio in worst]
    lines += ["", "Every part (MB):", "", table(comparisons)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    (args.out / "results.json").write_text(
        json.dumps(
            {
                "command": command,
                "layers": args.layers,
                "cases": [
                    {"case": c.case, "estimated_gb": c.estimated, "measured_gb": c.measured, "details": c.details}
                    for c in comparisons
                ],
            },
            indent=2,
        )
    )
    print("\n".join(lines[: len(worst) + 6]))


if __name__ == "__main__":
    main()
