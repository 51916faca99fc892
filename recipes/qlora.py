"""QLoRA fine-tuning of BLIP-2: the base is loaded in 4-bit NF4 (bitsandbytes) and frozen, LoRA
adapters are trained on top in bf16.

One GPU (defaults: Salesforce/blip2-opt-2.7b, NF4, r=16, paged 8-bit AdamW):
    python recipes/qlora.py --output_dir outputs/qlora
Offline on CPU with the embedded tiny model:
    python recipes/qlora.py --config recipes/configs/tiny/qlora.yaml
"""

from core.train import main

DEFAULTS = {
    "recipe": "qlora",
    "use_peft": True,
    "load_in_4bit": True,
    "bnb_4bit_quant_type": "nf4",
    "learning_rate": 2e-4,
    "optim": "paged_adamw_8bit",
    "output_dir": "outputs/qlora",
}

if __name__ == "__main__":
    main(DEFAULTS)
