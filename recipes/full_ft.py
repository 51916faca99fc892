"""Full fine-tuning of BLIP-2 into an alt-text writer: every weight is trained.

One GPU (defaults: Salesforce/blip2-opt-2.7b, bf16 weights, activation checkpointing, 8-bit AdamW):
    python recipes/full_ft.py --output_dir outputs/full-ft
Four GPUs with FSDP:
    accelerate launch --config_file accelerate_configs/fsdp4.yaml recipes/full_ft.py
Offline on CPU with the embedded tiny model and food photos:
    python recipes/full_ft.py --config recipes/configs/demo.yaml
"""

from alt_text_recipes.train.loop import main

if __name__ == "__main__":
    main("full_ft")
