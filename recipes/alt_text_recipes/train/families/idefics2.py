"""Idefics2 (HuggingFaceM4/idefics2-8b: SigLIP + perceiver resampler + Mistral) and Idefics3
(HuggingFaceM4/Idefics3-8B-Llama3: SigLIP + pixel shuffle and one projection + Llama): one adapter, the same
module names and chat template; each its own layer arithmetic."""

from __future__ import annotations

import math

from alt_text_recipes.train.families import DECODER_PROJECTIONS, ModelFamily, Twin
from alt_text_recipes.train.stack_shapes import Stack, connector_projection, layers_of, llama_decoder

VISION = "model.vision_model"
CONNECTOR = "model.connector"
TEXT_MODEL = "model.text_model"
IDEFICS2_SPLIT_IMAGES = 5  # do_image_splitting: 4 crops + the whole image


def idefics2_stacks(
    config, caption_tokens: int, prompt_tokens: int, image_processor: dict | None = None
) -> tuple[list[Stack], int]:
    """Idefics2: per image the vision tower, the projection MLP and the perceiver; then the language model."""
    vision, perceiver, text = config.vision_config, config.perceiver_config, config.get_text_config()
    image_processor = image_processor or {}
    images = IDEFICS2_SPLIT_IMAGES if image_processor.get("do_image_splitting", False) else 1
    side = min((image_processor.get("size") or {}).get("shortest_edge", 378), vision.image_size)
    patches = (side // vision.patch_size) ** 2
    latents = perceiver.resampler_n_latents
    seq = images * latents + prompt_tokens + caption_tokens
    stacks = [
        layers_of("vision", vision, patches, "siglip", "vision", f"{VISION}.encoder.layers", per_example=images),
        connector_projection(
            "connector_projection",
            patches,
            vision.hidden_size,
            text.intermediate_size,
            "gated_projection",
            f"{CONNECTOR}.modality_projection",
            per_example=images,
        ),
        Stack(
            "connector_perceiver",
            perceiver.resampler_depth,
            latents,
            perceiver.hidden_size,
            4 * perceiver.hidden_size,
            perceiver.resampler_n_heads,
            kind="perceiver",
            part="connector",
            modules=f"{CONNECTOR}.perceiver_resampler.layers",
            per_example=images,
            checkpointed=False,
            kv_seq=patches + latents,
            context_seq=patches,
            attention_width=perceiver.resampler_n_heads * perceiver.resampler_head_dim,
            kv_width=perceiver.num_key_value_heads * perceiver.resampler_head_dim,
        ),
        llama_decoder(text, seq, f"{TEXT_MODEL}.layers"),
    ]
    return stacks, seq


def idefics3_images(config, image_processor: dict) -> tuple[int, int]:
    """(sub-images per example, rows of tiles) as the Idefics3 processor cuts a square photo: resized to
    size.longest_edge (1456 px), cut into tiles of max_image_size.longest_edge (the encoder's 364 px), plus the
    whole image at tile size when it splits; one tile-sized image when it does not split."""
    tile = (image_processor.get("max_image_size") or {}).get("longest_edge", config.vision_config.image_size)
    if not image_processor.get("do_image_splitting", False):
        return 1, 0
    side = (image_processor.get("size") or {}).get("longest_edge", 4 * tile)
    rows = math.ceil(side / tile)
    return (rows * rows + 1, rows) if rows > 1 else (1, 0)


def idefics3_stacks(
    config, caption_tokens: int, prompt_tokens: int, image_processor: dict | None = None
) -> tuple[list[Stack], int]:
    """Idefics3: per sub-image the SigLIP tower over its patches and the connector (pixel shuffle, then one
    linear projection over the shuffled tokens); the language model over image_seq_len tokens per sub-image,
    the tile tags (two per sub-image and a newline per row) + prompt + caption."""
    vision, text = config.vision_config, config.get_text_config()
    images, rows = idefics3_images(config, image_processor or {})
    patches = (vision.image_size // vision.patch_size) ** 2
    image_tokens = patches // config.scale_factor**2  # 169 for 364 px, patch 14, scale 2
    seq = images * image_tokens + 2 * images + rows + prompt_tokens + caption_tokens
    stacks = [
        layers_of("vision", vision, patches, "siglip", "vision", f"{VISION}.encoder.layers", per_example=images),
        # pixel shuffle only reshapes: the projection's input (scale² x the vision width) is what is saved
        connector_projection(
            "connector",
            image_tokens,
            vision.hidden_size * config.scale_factor**2,
            0,
            "linear_projection",
            f"{CONNECTOR}.modality_projection",
            per_example=images,
        ),
        llama_decoder(text, seq, f"{TEXT_MODEL}.layers"),
    ]
    return stacks, seq


FAMILY = ModelFamily(
    name="idefics2",
    model_types=("idefics2", "idefics3"),
    prompt="chat",
    parts={"vision": (VISION,), "connector": (CONNECTOR,), "language": (TEXT_MODEL, "lm_head")},
    # As in the Idefics2 fine-tuning notebooks: the language model's and the connector's projections.
    lora_targets={"*": rf".*(text_model|connector).*\.({DECODER_PROJECTIONS})"},
    fsdp_wrap=(
        "Idefics2EncoderLayer",
        "Idefics2PerceiverLayer",
        "Idefics3EncoderLayer",
        "MistralDecoderLayer",
        "LlamaDecoderLayer",
    ),
    end_of_turn="<end_of_utterance>",
    layer_stacks={"idefics2": idefics2_stacks, "idefics3": idefics3_stacks},
    twins=(Twin("idefics2", "data/models/tiny-idefics2", builds="idefics2", model_type="idefics2"),),
    shipped_configs=("HuggingFaceM4/idefics2-8b", "HuggingFaceM4/Idefics3-8B-Llama3"),
    accelerate_configs=("accelerate_configs/fsdp4_idefics2.yaml",),
)
