"""The layer stacks of a model, as each family declares them (`ModelFamily.layer_stacks`): depth, widths and
sequence lengths read from its config. The memory estimate (memory/activations.py) turns them into bytes."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Stack:
    """One stack of identical layers (or one MLP), with the shapes its saved tensors have."""

    name: str
    layers: int
    seq: int
    hidden: int
    mlp: int
    heads: int
    kind: str = "vit"  # a key of LAYER_KINDS
    part: str = "language"
    modules: str = ""  # the layer list (or the one module) in the model
    per_example: int = 1  # sequences per example (Idefics2: one per image)
    checkpointed: bool = True  # activation checkpointing applies to its layers
    kv_seq: int = 0  # cross-attention: the attended sequence (0: self-attention only)
    kv_input: int = 0  # the attended sequence's width before the key/value projections
    kv_width: int = 0  # keys'/values' width (grouped-query attention: kv heads × head dim; 0: h)
    attention_width: int = 0  # queries' width (heads × head dim; 0: h)
    cross_every: int = 1  # cross-attention in one layer of this many (BLIP-2's Q-Former: 2)
    dropout: bool = False  # dropout layers active in training (OPT, T5, Q-Former configs)
    context_seq: int = 0  # Idefics2's perceiver: the image patches its latents read
    kv_input_kept: bool = False  # the attended sequence is already kept by what produced it (BLIP-2: a trained
    #                              vision tower's final norm keeps it), so the key/value projections add nothing
    fp32_linear_weights: int = 0  # fp32 weights of the linear layers in one layer (bf16 copies under autocast)
    adapters: list = field(default_factory=list)  # (in_features, tokens it reads) of each adapter in one layer
    lora_rank: int = 0
    lora_dropout: bool = False


def kv_width_of(config) -> int:
    """Keys' and values' width in a decoder config: kv heads × head dim (grouped-query attention)."""
    heads = config.num_attention_heads
    return (getattr(config, "num_key_value_heads", None) or heads) * (
        getattr(config, "head_dim", None) or config.hidden_size // heads
    )


def layers_of(name: str, config, seq: int, kind: str, part: str, modules: str, **shape) -> Stack:
    """A stack of a sub-model's layers, its depth and widths read from the usual config fields (ViT, SigLIP, CLIP,
    the Q-Former, Llama/Mistral); `shape` sets the other Stack fields."""
    return Stack(
        name,
        config.num_hidden_layers,
        seq,
        config.hidden_size,
        config.intermediate_size,
        config.num_attention_heads,
        kind=kind,
        part=part,
        modules=modules,
        **shape,
    )


def llama_decoder(text, seq: int, modules: str) -> Stack:
    """A Llama/Mistral language model's decoder layers over `seq` tokens (grouped-query attention)."""
    return layers_of("language_model", text, seq, "llama", "language", modules, kv_width=kv_width_of(text))


def connector_projection(
    name: str, seq: int, width_in: int, width_out: int, kind: str, modules: str, **shape
) -> Stack:
    """A connector's projection (one MLP or linear layer, which transformers does not checkpoint) over `seq` tokens."""
    return Stack(
        name, 1, seq, width_in, width_out, 0, kind=kind, part="connector", modules=modules, checkpointed=False, **shape
    )
