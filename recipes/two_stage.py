"""Two-stage fine-tuning (as LLaVA trains): stage 1 aligns the connector alone (vision tower and language
model frozen), stage 2 continues from stage 1 with the connector plus LoRA on the language model.

One GPU (LLaVA-1.5 7B; any family works: Idefics2, BLIP-2):
    python recipes/two_stage.py --model_name_or_path llava-hf/llava-1.5-7b-hf --output_dir outputs/two-stage
Offline on CPU with the embedded tiny LLaVA:
    python recipes/two_stage.py --config recipes/configs/tiny/two_stage.yaml
Outputs: <output_dir>/stage1 (full model, stage 2's base) and <output_dir>/stage2 (adapter + connector);
reload stage 2 with `alt_text_recipes.train.modeling.load_trained("<output_dir>/stage2")`.
"""

from alt_text_recipes.data.errors import exit_on_user_error
from alt_text_recipes.train.stages import run_two_stage

if __name__ == "__main__":
    exit_on_user_error(run_two_stage, "two_stage")
