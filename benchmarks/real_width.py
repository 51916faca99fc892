"""The memory estimator against one measured training step at real width, on CPU, part by part.

    python benchmarks/real_width.py                                  # every family and case (about 20 min)
    python benchmarks/real_width.py --models Salesforce/blip2-opt-2.7b --out /tmp/rw

Each shipped real config (BLIP-2 OPT-2.7B and Flan-T5-XL, LLaVA-1.5-7B, Idefics2-8B) is built with its real
widths, vocabulary and sequence lengths but `--layers` layers per stack and random weights; each case (full
fine-tuning, LoRA, QLoRA; fp32, bf16-mixed, bf16; activation checkpointing on and off) runs one optimizer step
through its recipe, and the estimate for the same reduced config stands beside what was measured:
parameters, gradients, optimizer state and the activations each stack saves (recipes/core/real_width.py).
Writes results.md (the table, the worst part of each case) and results.json to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "recipes"))

from core.real_width import Case, measure_cases, table  # noqa: E402

MODELS = ["Salesforce/blip2-opt-2.7b", "Salesforce/blip2-flan-t5-xl", "llava-hf/llava-1.5-7b-hf",
          "HuggingFaceM4/idefics2-8b"]
CASES = [Case("full_ft", "float32", False, False, "adamw_torch"), Case("full_ft", "float32", False, True),
         Case("full_ft", "float32", True, False, "adamw_torch"), Case("lora", "float32", False, False),
         Case("lora", "bfloat16", True, True), Case("qlora", "bfloat16", True, False),
         Case("qlora", "bfloat16", True, True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--layers", type=int, default=2, help="layers per stack")
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/real-width"))
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks/results/real-width-cpu")
    args = parser.parse_args()
    comparisons, started = [], time.perf_counter()
    for model in args.models:
        comparisons += measure_cases(model, CASES, args.work_dir, args.layers)
        print(table(comparisons[-len(CASES):]), flush=True)
    worst = [(c.case, *c.worst()) for c in comparisons]
    command = "python benchmarks/real_width.py " + " ".join(sys.argv[1:])
    lines = [f"Command: `{command}` ({time.perf_counter() - started:.0f} s, CPU, {args.layers} layers per stack, "
             "batch 2)", "", "Worst part of each case (measured ÷ estimated):", "",
             "| case | part | ratio |", "|---|---|---|"]
    lines += [f"| {case} | {part} | {ratio:.3f} |" for case, part, ratio in worst]
    lines += ["", "Every part (MB):", "", table(comparisons)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    (args.out / "results.json").write_text(json.dumps(
        {"command": command, "layers": args.layers, "cases": [
            {"case": c.case, "estimated_gb": c.estimated, "measured_gb": c.measured, "details": c.details}
            for c in comparisons]}, indent=2))
    print("\n".join(lines[:len(worst) + 6]))


if __name__ == "__main__":
    main()
