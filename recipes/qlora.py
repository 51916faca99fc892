"""QLoRA fine-tuning of BLIP-2: the base is loaded in 4-bit NF4 (bitsandbytes) and frozen, LoRA
adapters are trained on top in bf16.

One GPU (defaults: Salesforce/blip2-opt-2.7b, NF4, r=16, paged 8-bit AdamW):
    python recipes/qlora.py --output_dir outputs/qlora
Offline on CPU with the embedded tiny model:
    python recipes/qlora.py --config recipes/configs/tiny/qlora.yaml
"""

from alt_text_recipes.train.loop import main

if __name__ == "__main__":
    main("qlora")
