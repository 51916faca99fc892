"""LoRA fine-tuning of BLIP-2: the base stays frozen, low-rank adapters on the language model's
attention are trained (OPT `q_proj`/`v_proj`, T5 `q`/`v`; `--lora_target_modules` to change).

One GPU (defaults: Salesforce/blip2-opt-2.7b in bf16, r=16):
    python recipes/lora.py --output_dir outputs/lora
Offline on CPU with the embedded tiny model:
    python recipes/lora.py --config recipes/configs/tiny/lora.yaml
Reload from any folder: `pipeline("image-text-to-text", model=output_dir)` or `PeftModel.from_pretrained` (the
adapter names its base by Hub id or absolute path; the processor and a model card with the code are beside it).
"""

from alt_text_recipes.train.loop import main

if __name__ == "__main__":
    main("lora")
