"""The memory estimator at real width: one measured training step per case, every part within 10%.

The tiny twins cannot test the estimator (their memory is mostly the Python process), so each family's
shipped real config is built with its real widths, vocabulary and sequence lengths but two layers per stack,
and one optimizer step runs through the recipe (recipes/core/real_width.py). Parameters, gradients and
optimizer state are the tensors' storages; activations are what autograd saves while each stack runs.
These cases cover each technique (full fine-tuning with AdamW and 8-bit AdamW, LoRA, QLoRA), precision
(fp32, bf16-mixed, bf16) and activation checkpointing on and off, spread over the four families;
`python benchmarks/real_width.py` runs every case for every family (benchmarks/results/real-width-cpu).
"""

from __future__ import annotations

import pytest

from core.real_width import Case, measure_cases, table

TOLERANCE = 0.10
CASES = {
    "Salesforce/blip2-opt-2.7b": [Case("full_ft", "float32", False, False, "adamw_torch"),
                                  Case("full_ft", "float32", False, True),
                                  Case("qlora", "bfloat16", True, False)],
    "Salesforce/blip2-flan-t5-xl": [Case("lora", "bfloat16", True, True)],
    "llava-hf/llava-1.5-7b-hf": [Case("lora", "float32", False, False)],
    "HuggingFaceM4/idefics2-8b": [Case("qlora", "bfloat16", True, True)],
}


@pytest.mark.parametrize("model", sorted(CASES))
def test_estimate_matches_one_real_width_step(model, tmp_path_factory):
    comparisons = measure_cases(model, CASES[model], tmp_path_factory.mktemp("real-width"), layers=2)
    print("\n" + table(comparisons))
    for comparison in comparisons:
        ratios = comparison.ratios()
        assert ratios, comparison.case
        for part, ratio in ratios.items():
            assert ratio == pytest.approx(1.0, abs=TOLERANCE), f"{comparison.case}: {part} measured ÷ estimated {ratio:.3f}"
        # the activations were measured, not assumed: at least one stack saved something
        assert any(value > 0 for part, value in comparison.measured.items() if part.startswith("act:"))
