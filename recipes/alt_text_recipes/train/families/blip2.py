"""BLIP-2 (Salesforce/blip2-*): ViT + Q-Former + OPT decoder or Flan-T5 encoder-decoder, captioning bare (the
caption follows the image tokens, as it was pre-trained)."""

from __future__ import annotations

from alt_text_recipes.train.families import ModelFamily, Twin
from alt_text_recipes.train.stack_shapes import Stack, layers_of

VISION = "vision_model"
QFORMER = "qformer"
LANGUAGE = "language_model"


def _t5_stack(name: str, text, layers: int, seq: int, side: str, kv_seq: int = 0) -> Stack:
    """Flan-T5's encoder or decoder blocks (the decoder cross-attends to the encoder's `kv_seq` tokens)."""
    return Stack(
        name,
        layers,
        seq,
        text.d_model,
        text.d_ff,
        text.num_heads,
        kind="t5",
        modules=f"{LANGUAGE}.{side}.block",
        kv_seq=kv_seq,
        dropout=text.dropout_rate > 0,
    )


def blip2_stacks(
    config, caption_tokens: int, prompt_tokens: int, image_processor: dict | None = None
) -> tuple[list[Stack], int]:
    """The layer stacks of a BLIP-2 model and the length the loss runs over."""
    vision, qformer, text = config.vision_config, config.qformer_config, config.get_text_config()
    patches = (vision.image_size // vision.patch_size) ** 2 + 1
    queries = config.num_query_tokens
    stacks = [
        layers_of("vision", vision, patches, "vit", "vision", f"{VISION}.encoder.layers"),
        layers_of(
            "qformer",
            qformer,
            queries,
            "qformer",
            "connector",
            f"{QFORMER}.encoder.layer",
            kv_seq=patches,
            kv_input=qformer.encoder_hidden_size,
            cross_every=qformer.cross_attention_frequency,
            dropout=qformer.hidden_dropout_prob > 0,
        ),
    ]
    if text.is_encoder_decoder:  # T5: image tokens + prompt into the encoder, caption out of the decoder
        encoder_seq, decoder_seq = queries + prompt_tokens, caption_tokens
        stacks.append(_t5_stack("language_encoder", text, text.num_layers, encoder_seq, "encoder"))
        stacks.append(
            _t5_stack("language_decoder", text, text.num_decoder_layers, decoder_seq, "decoder", encoder_seq)
        )
        return stacks, decoder_seq
    seq = queries + prompt_tokens + caption_tokens
    stacks.append(
        Stack(
            "language_model",
            text.num_hidden_layers,
            seq,
            text.hidden_size,
            getattr(text, "ffn_dim", None) or text.intermediate_size,
            text.num_attention_heads,
            kind="opt",
            modules=f"{LANGUAGE}.model.decoder.layers",
            dropout=text.dropout > 0,
        )
    )
    return stacks, seq


FAMILY = ModelFamily(
    name="blip2",
    model_types=("blip-2",),
    prompt="bare",
    parts={
        "vision": (VISION,),
        "connector": ("query_tokens", QFORMER, "language_projection"),
        "language": (LANGUAGE,),
    },
    # The language model's attention query and value projections (the BLIP-2 names are unique to it).
    lora_targets={"opt": ["q_proj", "v_proj"], "t5": ["q", "v"]},
    fsdp_wrap=("Blip2EncoderLayer", "Blip2QFormerModel", "Blip2QFormerLayer", "OPTDecoderLayer", "T5Block"),
    layer_stacks={"blip-2": blip2_stacks},
    twins=(
        Twin("blip2-opt", "data/models/tiny-blip2-opt", builds="opt", model_type="blip-2"),
        Twin("blip2-t5", "data/models/tiny-blip2-t5", builds="t5", model_type="blip-2", encoder_decoder=True),
    ),
    shipped_configs=(
        "Salesforce/blip2-opt-2.7b",
        "Salesforce/blip2-opt-6.7b",
        "Salesforce/blip2-flan-t5-xl",
        "Salesforce/blip2-flan-t5-xxl",
    ),
    accelerate_configs=("accelerate_configs/fsdp4.yaml", "accelerate_configs/fsdp_2x4.yaml"),
)
