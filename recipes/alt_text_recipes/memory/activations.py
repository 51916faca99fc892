"""What autograd keeps for backward, per layer kind: the activation side of the memory estimate.

Each layer kind lists the tensors its forward pass saves, read off the autograd graph of the real
transformers layers (tests/test_real_width.py measures them at real width). Sizes are in elements of
the layer's shapes: s tokens, width h, MLP width f, `heads` attention maps of s × s_kv, and each tensor
is held in one of four precisions:

  compute   the matmul dtype: bf16 under bf16 autocast or with bf16 weights, else fp32;
  residual  the residual stream, i.e. the weights' dtype (fp32 under bf16-mixed; fp32 for QLoRA, whose
            norms and embeddings prepare_model_for_kbit_training keeps in fp32);
  upcast    an fp32 copy that RMS norms make of a non-fp32 input (0 bytes when the input is fp32);
  mask      a dropout mask: 1 byte on a GPU, the compute dtype on a CPU (where dropout multiplies).

Which tensors are saved depends on what trains:
  full     weights trained: every linear layer also keeps its input (for the weight's gradient);
  lora     frozen weights, adapters on some linear layers: each adapter keeps its (dropped-out) input;
  through  frozen, no adapters, gradients passing back to something trained before the stack;
  frozen   nothing trainable before or inside: nothing is saved.
Under bf16 autocast a linear layer fed from the fp32 residual stream casts its input itself, so each
consumer of a norm's output keeps its own bf16 copy, and each linear layer with gradients flowing keeps a
bf16 copy of its fp32 weight (2 bytes per weight, per micro-batch, whatever the batch size).

Activation checkpointing keeps each checkpointed layer's input (s·h, residual dtype) and, during backward,
one layer's saves recomputed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from alt_text_recipes.train.stack_shapes import Stack


@dataclass(frozen=True)
class Precision:
    compute: int  # bytes
    residual: int
    mask: int
    autocast: bool  # bf16 autocast (bf16-mixed, or bf16 weights with --bf16)
    autocast_fp32_weights: bool  # bf16 autocast over fp32 weights: weights and inputs cast per layer
    on_gpu: bool

    @property
    def upcast(self) -> int:
        return 4 if self.residual != 4 else 0


def precision(weights_bytes: int, autocast: bool, quantized: bool, device: str) -> Precision:
    compute = 2 if autocast or weights_bytes == 2 else 4
    residual = 4 if quantized else weights_bytes
    return Precision(
        compute,
        residual,
        1 if device == "cuda" else compute,
        autocast,
        autocast and weights_bytes == 4 and not quantized,
        device == "cuda",
    )


def layer_bytes(stack: Stack, mode: str, p: Precision, eager: bool = False) -> float:
    """Bytes one layer saves for one sequence."""
    if mode == "frozen" or stack.layers == 0:
        return 0.0
    saved = LAYER_KINDS[stack.kind](stack, mode == "full", p, eager)
    return saved + (adapter_bytes(stack, p) if mode == "lora" else 0)


def adapter_bytes(stack: Stack, p: Precision) -> float:
    """LoRA (peft): an adapter casts its input to its own fp32 weights, drops it out (an fp32 mask on a CPU,
    1 byte on a GPU), and lora_A keeps it (as a bf16 copy under autocast); lora_B keeps lora_A's output."""
    kept = 2 if p.autocast else 4
    mask = (1 if p.on_gpu else 4) if stack.lora_dropout else 0
    return float(sum(tokens * (width * (kept + mask) + stack.lora_rank * kept) for width, tokens in stack.adapters))


def entry_discount(stack: Stack, p: Precision) -> float:
    """What the first layer of a LoRA stack with nothing trainable before it does not save: its input
    needs no gradient, so the first norm keeps nothing and the adapters reading that norm's output need no
    dropout mask (the gradient only starts at the adapters)."""
    s, h = stack.seq, stack.hidden
    mask = s * h * (1 if p.on_gpu else 4) if stack.lora_dropout else 0
    if stack.kind.endswith("projection"):  # no norm; the first linear layer's adapter reads the input
        return mask
    norm = rms_norm_bytes(s * h, p, False, stack.kind == "t5") if stack.kind in ("llama", "t5") else s * h * p.residual
    return norm + mask * min(len(stack.adapters), 2)  # the attention's adapters (q, v) read the first norm


def stack_saved_bytes(
    stack: Stack,
    mode: str,
    p: Precision,
    checkpointing: bool,
    eager: bool,
    batch: int,
    layers: int | None = None,
    entry: bool = False,
) -> float:
    """What a stack (or `layers` of its layers) saves for backward, for one micro-batch of `batch` examples.
    `entry`: the stack is where gradients start (LoRA with nothing trainable before it)."""
    if layers is not None:
        stack = replace(stack, layers=layers)
    if stack.layers == 0:
        return 0.0
    if mode == "frozen":  # checkpointing still keeps one hidden state (measured: 1 s·h whatever the depth;
        # the Q-Former's also the patches, once)
        if not (checkpointing and stack.checkpointed):
            return 0.0
        inputs = stack.seq * stack.hidden + stack.kv_seq * stack.kv_input
        return batch * stack.per_example * inputs * p.residual
    per_sequence = layer_bytes(stack, mode, p, eager)
    first_layer = per_sequence - (entry_discount(stack, p) if entry and mode == "lora" else 0)
    weight_copies = 2 * stack.fp32_linear_weights if p.autocast else 0  # per layer and micro-batch
    sequences = batch * stack.per_example
    if checkpointing and stack.checkpointed:
        # each layer's input; in backward one layer recomputed, re-reading that input rather than copying it
        kept = stack.layers * stack.seq * stack.hidden * p.residual
        recomputed = first_layer if stack.layers == 1 else per_sequence
        return sequences * (kept + recomputed - stack.seq * stack.hidden * p.residual) + weight_copies
    return sequences * ((stack.layers - 1) * per_sequence + first_layer) + stack.layers * weight_copies


# --- The layer kinds -----------------------------------------------------------------------------------
# Each returns the bytes one layer saves for one sequence, `weights` telling whether its weights train.


def _fed(consumers: int, p: Precision) -> int:
    """Copies kept of one norm output read by `consumers` linear layers."""
    return consumers if p.autocast_fp32_weights else 1


def vit_layer(st: Stack, weights: bool, p: Precision, eager: bool) -> float:
    """Pre-norm ViT layer (BLIP-2's ViT-g with fused qkv, SigLIP): two LayerNorms, attention, GELU MLP."""
    s, h, f = st.seq, st.hidden, st.mlp
    saved = 2 * s * h * p.residual  # LayerNorm inputs
    saved += 4 * s * h * p.compute  # q, k, v and the output (SDPA), the output projection's input
    saved += s * f * p.compute  # GELU input
    if eager:
        saved += st.heads * s * s * p.compute
    if weights:  # qkv, fc1 and fc2 inputs
        fused = st.kind == "vit"  # one qkv projection
        saved += s * h * p.compute * ((1 if fused else _fed(3, p)) + 1) + s * f * p.compute
    return saved


def clip_layer(st: Stack, weights: bool, p: Precision, eager: bool) -> float:
    """CLIP's layer: as SigLIP's, with quick_gelu (x·sigmoid(1.702x): its input and the sigmoid kept)."""
    return vit_layer(st, weights, p, eager) + st.seq * st.mlp * p.compute


def opt_layer(st: Stack, weights: bool, p: Precision, eager: bool) -> float:
    """OPT decoder layer: LayerNorms, attention, ReLU MLP (its output is fc2's input), two dropouts."""
    s, h, f = st.seq, st.hidden, st.mlp
    saved = 2 * s * h * p.residual + 4 * s * h * p.compute + s * f * p.compute  # norms; q, k, v, out; ReLU
    if st.dropout:
        saved += 2 * s * h * p.mask
    if eager:
        saved += 2 * st.heads * s * s * p.compute
    if weights:  # q/k/v input (one per consumer under autocast), fc1 input
        saved += s * h * p.compute * (_fed(3, p) + 1)
    return saved


def rms_norm_bytes(size: int, p: Precision, weights: bool, keeps_input: bool = False) -> float:
    """An RMS norm: the fp32 copy the variance is taken of (the input itself when fp32; T5 keeps the input
    too), and, when its weight trains, the normalised tensor the weight multiplies."""
    kept = size * (4 + (p.residual if keeps_input and p.residual != 4 else 0))
    return kept + (size * p.residual if weights else 0)


def llama_layer(st: Stack, weights: bool, p: Precision, eager: bool) -> float:
    """Llama/Mistral decoder layer: RMS norms, grouped-query attention with rotary embeddings, gated SiLU MLP."""
    s, h, f = st.seq, st.hidden, st.mlp
    kv = st.kv_width or h
    saved = 2 * rms_norm_bytes(s * h, p, weights) + s * (2 * h + 2 * kv) * p.compute  # norms; q, k, v (rotary), out
    saved += 3 * s * f * p.compute  # gate output (SiLU input), SiLU output, up output
    if eager:
        saved += st.heads * s * s * (p.compute + 4)  # fp32 softmax and its cast
    if weights:  # q/k/v input, gate/up input, down input
        saved += s * h * p.compute * (_fed(3, p) + _fed(2, p)) + s * f * p.compute
    return saved


def t5_layer(st: Stack, weights: bool, p: Precision, eager: bool) -> float:
    """T5 block (encoder, or decoder with cross-attention): RMS norms, eager attention, gated gelu_new MLP."""
    s, h, f = st.seq, st.hidden, st.mlp
    cross = st.kv_seq > 0
    saved = (3 if cross else 2) * rms_norm_bytes(s * h, p, weights, keeps_input=True)
    saved += 3 * s * h * p.compute + 2 * st.heads * s * s * p.compute  # q, k, v; softmax, dropped probabilities
    saved += 6 * s * f * p.compute  # gelu_new's pieces (pow, tanh, products) and the gated product
    if cross:
        saved += s * h * p.compute + 2 * st.kv_seq * h * p.compute + 2 * st.heads * s * st.kv_seq * p.compute
    if st.dropout:
        saved += (
            (3 if cross else 2) * s * h + s * f + st.heads * s * s + (st.heads * s * st.kv_seq if cross else 0)
        ) * p.mask
    if weights:  # q/k/v, o, (cross q, cross o,) wi and wo inputs
        saved += s * h * p.compute * (_fed(3, p) + 1 + (1 + 1 if cross else 0) + _fed(2, p))
        saved += s * f * p.compute
        if cross:  # the encoder output the cross k/v read (shared by the layers unless cast per layer)
            saved += st.kv_seq * h * p.compute * (_fed(2, p) if p.autocast_fp32_weights else 1 / st.layers)
    return saved


def qformer_layer(st: Stack, weights: bool, p: Precision, eager: bool) -> float:
    """BLIP-2's Q-Former layer (BERT-style, eager attention, post-norm): self-attention over the queries,
    cross-attention to the image patches in one layer of `cross_every`, GELU MLP, dropout."""
    s, h, f, heads = st.seq, st.hidden, st.mlp, st.heads
    cross_share = math.ceil(st.layers / st.cross_every) / st.layers  # layers 0, cross_every, ...
    saved = 3 * s * h * p.residual  # LayerNorm inputs (self-attention, cross-attention, MLP outputs)
    saved += 3 * s * h * p.compute + 2 * heads * s * s * p.compute + s * f * p.compute  # q,k,v; probs; GELU in
    masks = 2 * s * h + heads * s * s
    cross = s * h * p.compute + 2 * st.kv_seq * h * p.compute + 2 * heads * s * st.kv_seq * p.compute
    cross_masks = s * h + heads * s * st.kv_seq
    if weights:  # qkv, self output, MLP in and out
        saved += s * h * p.compute * (_fed(3, p) + 1 + 1) + s * f * p.compute
        cross += 2 * s * h * p.compute  # cross query and output inputs
        # the image patches the cross key/value projections read: one copy for all layers
        if not st.kv_input_kept or p.autocast_fp32_weights:
            cross += (
                st.kv_seq
                * st.kv_input
                * p.compute
                * (_fed(2, p) if p.autocast_fp32_weights else 1 / st.layers / cross_share)
            )
    saved += cross_share * cross
    if st.dropout:
        saved += (masks + cross_share * cross_masks) * p.mask
    return saved


def perceiver_layer(st: Stack, weights: bool, p: Precision, eager: bool) -> float:
    """Idefics2's perceiver resampler layer: latents (s) attend to [image patches; latents] (kv_seq)."""
    s, h, f, context = st.seq, st.hidden, st.mlp, st.context_seq
    q, kv = st.attention_width or h, st.kv_width or h
    # latents, post-attention and context norms
    saved = 2 * rms_norm_bytes(s * h, p, weights) + rms_norm_bytes(context * h, p, weights)
    saved += s * q * p.compute + 2 * st.kv_seq * kv * p.compute + 3 * s * f * p.compute
    if weights:  # q input, k/v input ([context; latents]), o input, gate/up and down inputs
        saved += s * h * p.compute * (1 + _fed(2, p)) + st.kv_seq * h * p.compute * _fed(2, p)
        saved += s * q * p.compute + s * f * p.compute
    return saved


def gated_projection(st: Stack, weights: bool, p: Precision, eager: bool) -> float:
    """Idefics2's modality projection: a gated SiLU MLP from the vision width (h) through f."""
    s, h, f = st.seq, st.hidden, st.mlp
    return 3 * s * f * p.compute + (s * h * p.compute * _fed(2, p) + s * f * p.compute if weights else 0)


def gelu_projection(st: Stack, weights: bool, p: Precision, eager: bool) -> float:
    """LLaVA's projector: linear (vision width h to f), GELU, linear."""
    s, h, f = st.seq, st.hidden, st.mlp
    return s * f * p.compute + (s * h * p.compute + s * f * p.compute if weights else 0)


def linear_projection(st: Stack, weights: bool, p: Precision, eager: bool) -> float:
    """Idefics3's connector: one linear layer over the pixel-shuffled patches (width h)."""
    return st.seq * st.hidden * p.compute * 1 if weights else 0.0


LAYER_KINDS = {
    "linear_projection": linear_projection,
    "vit": vit_layer,
    "siglip": vit_layer,
    "clip": clip_layer,
    "opt": opt_layer,
    "llama": llama_layer,
    "t5": t5_layer,
    "qformer": qformer_layer,
    "perceiver": perceiver_layer,
    "gated_projection": gated_projection,
    "gelu_projection": gelu_projection,
}
