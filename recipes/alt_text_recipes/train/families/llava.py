"""LLaVA-1.5 (llava-hf/llava-1.5-7b-hf): CLIP vision tower + MLP projector + Llama, with a chat template."""

from __future__ import annotations

from alt_text_recipes.train.families import DECODER_PROJECTIONS, ModelFamily, Twin
from alt_text_recipes.train.stack_shapes import Stack, connector_projection, layers_of, llama_decoder

VISION = "model.vision_tower"
PROJECTOR = "model.multi_modal_projector"
LANGUAGE = "model.language_model"


def llava_stacks(
    config, caption_tokens: int, prompt_tokens: int, image_processor: dict | None = None
) -> tuple[list[Stack], int]:
    """LLaVA: CLIP over the patches and the class token; the projector and the language model over the image tokens."""
    vision, text = config.vision_config, config.get_text_config()
    patches = (vision.image_size // vision.patch_size) ** 2
    image_tokens = patches + (1 if config.vision_feature_select_strategy == "full" else 0)
    seq = image_tokens + prompt_tokens + caption_tokens
    stacks = [
        layers_of("vision", vision, patches + 1, "clip", "vision", f"{VISION}.encoder.layers"),
        connector_projection(
            "connector", image_tokens, vision.hidden_size, text.hidden_size, "gelu_projection", PROJECTOR
        ),
        llama_decoder(text, seq, f"{LANGUAGE}.layers"),
    ]
    return stacks, seq


FAMILY = ModelFamily(
    name="llava",
    model_types=("llava",),
    prompt="chat",
    parts={"vision": (VISION,), "connector": (PROJECTOR,), "language": (LANGUAGE, "lm_head")},
    lora_targets={"*": rf".*(language_model\..*\.({DECODER_PROJECTIONS})|multi_modal_projector\.linear_\d+)"},
    fsdp_wrap=("CLIPEncoderLayer", "LlamaDecoderLayer", "MistralDecoderLayer"),
    layer_stacks={"llava": llava_stacks},
    twins=(Twin("llava", "data/models/tiny-llava", builds="llava", model_type="llava"),),
    shipped_configs=("llava-hf/llava-1.5-7b-hf",),
)
