"""Predict a recipe's training memory before any weight is loaded.

The model is built from its configuration on the meta device (no memory, no download: the configs
of the four BLIP-2 variants, Idefics2-8B, Idefics3-8B-Llama3 and LLaVA-1.5-7B ship in
`data/model_configs/`), so parameter counts are exact. What trains follows the recipe, per model family
(recipes/alt_text_recipes/train/families/):

  full_ft     the parts named in `--train_modules` (vision, connector, language; default all three)
              train; every other parameter is frozen (no gradient, no optimizer state).
  lora/qlora  LoRA adapters on the family's default targets (or `--lora_target_modules`), matched as
              peft matches them: a list entry matches a module named so or ending in "." + entry, a
              string is `re.fullmatch`ed against the full module name, "all-linear" takes every linear
              layer but the output layer. A part named in `--train_modules` (and a module in
              `--lora_modules_to_save`) trains in full beside the adapters as peft's modules_to_save: a
              trainable copy next to the frozen original, no adapter inside it, and under 4-bit it is
              not quantized.

Then, per GPU, in bytes:

  params      = each parameter x the bytes of the dtype it is held in: `--dtype` (transformers keeps
                the modules a model lists in `_keep_in_fp32_modules` -- BLIP-2's Q-Former, T5's `wo` --
                in fp32 only for fp16 loads, not bf16); a 4-bit (QLoRA) linear weight takes 0.5 byte
                plus a 4-byte absmax per 64 weights, except the output layer, those fp32-listed modules
                and the parts trained in full, which are not quantized; `prepare_model_for_kbit_training`
                then puts every weight that is not 4-bit in fp32; LoRA adapters are fp32. A part trained
                in full beside adapters counts twice (frozen original and trainable copy).
  grads       = trainable parameters x their dtype's bytes.
  optimizer   = AdamW (torch): two moments in the parameter's dtype (8 B/param fp32, 4 B/param bf16);
                8-bit AdamW (bitsandbytes): 2 B/param + a 4-byte absmax per 256 for tensors of at least
                4096 elements, fp32 moments (8 B/param) below that and for embeddings (the Trainer
                keeps those in 32 bits); SGD without momentum: 0.
  activations = what autograd saves for backward, per micro-batch (recipes/alt_text_recipes/memory/activations.py): per
                layer kind (ViT, SigLIP, CLIP, Q-Former, OPT, T5, Llama/Mistral, the perceiver and the
                projectors) the tensors its forward pass keeps, in s·h, s·f and attention-map units (s
                tokens, h wide, f MLP width), each in the dtype it is held in (the compute dtype, the
                residual stream's, fp32 copies made by RMS norms, dropout masks); a linear layer keeps its
                input only when its weight trains, an adapter keeps its own; under bf16 autocast over fp32
                weights every layer with gradients flowing keeps bf16 copies of its weights. A stack trained
                in full, with LoRA adapters, frozen with gradients passing back to something trained before
                it, or frozen with nothing trainable before it (saves nothing). Activation checkpointing
                keeps each layer's input plus one layer recomputed, for the layers transformers checkpoints
                (not Idefics2's perceiver and projection, nor LLaVA's projector). Outside the stacks: the
                fp32 log-probabilities over the vocabulary (s·V), final norms, the output layer's input,
                the patch embedding's pixels. tests/test_real_width.py checks each part within 10% of one
                measured step at real width.
  other       = allocator slack and temporaries: 10% of the above. On CPU the process itself
                (Python, torch and the libraries, measured in this process) is added, since a
                CPU run's peak is the whole process.

The layer stacks per family (each family module builds its own):

  BLIP-2      ViT over its patches + 1; the Q-Former over its query tokens (cross-attending to the
              patches); OPT over query tokens + prompt + caption, or T5's encoder over query tokens +
              prompt and its decoder over the caption.
  Idefics2    per image, the SigLIP tower over its patches, the projection MLP over the same patches and
              the perceiver over its latents (cross-attending to the patches); the language model over
              64 latents per image + prompt + caption. An image is assumed square at the processor's
              shortest_edge (378 px: 27² = 729 patches; larger photos up to 980 px make more patches),
              and one example is 5 images (4 crops + the whole) when the processor splits images
              (`do_image_splitting`, read from the processor config beside the model config or in the
              model's folder; the shipped idefics2-8b processor config splits).
  Idefics3    per sub-image the SigLIP tower over its patches (364 px / 14: 676) and the connector (pixel
              shuffle by scale_factor, then one linear projection over the 169 shuffled tokens); the
              language model over 169 tokens per sub-image + two tile tags per sub-image and a newline
              per row + prompt + caption. A square photo is resized to size.longest_edge (1456 px) and,
              when the processor splits (the shipped processor config does), cut into 4 x 4 tiles of
              max_image_size (364 px) plus the whole image: 17 sub-images.
  LLaVA       CLIP over 577 tokens (576 patches + class token); the projector and the language model
              over the 576 image tokens + prompt + caption.

  The prompt is one token (BOS) for BLIP-2; for chat families the instruction (about 1.3 tokens a
  word) plus about 16 tokens of chat template (turn markers, the tokens around the image).

Strategies divide as they do (which one, and from where -- --strategy, --deepspeed, --fsdp/--fsdp_config,
the accelerate config, --device_map -- is read by recipes/alt_text_recipes/train/strategies.py and said in the
output): DDP
keeps a full copy per GPU plus gradient buckets (one more copy of the gradients); FSDP FULL_SHARD divides
params, grads and optimizer state by the GPU count and adds the largest wrapped unit (the family's FSDP
classes) gathered, SHARD_GRAD_OP keeps the params whole, HYBRID_* shard within a machine, CPU offload
leaves only the gathered units on the GPU; DeepSpeed ZeRO holds the params in bf16/fp16 when that is on,
fp32 master weights and moments (12 B/param) of 1/N of the trainable parameters, their fp32 gradients at
the step, and reduce buckets (reduce_bucket_size, "auto" = h², two with overlap_comm): stage 1 keeps the
full bf16 gradients, stage 2 1/N of them, stage 3 also 1/N of the params (bar those under the persistence
threshold) plus one module and the prefetch bucket gathered. With the optimizer offloaded, master weights,
moments and fp32 gradients (with gradient accumulation also a buffer in the training dtype) move to the
host, leaving the buckets on the GPU; with params offloaded (stage 3) their partitions move too.
Model parallel (`--device_map`, strategy model_parallel) splits the layers over the GPUs of one
machine as `plan_device_map` does for `--num_gpus` GPUs (default: those visible, or the devices of a
JSON map): the figure is the most loaded GPU's -- its parameters, their gradients and optimizer
state, and the activations of its layers (the logits on the GPU of the output layer). Weights that do
not fit on the GPUs count as host memory.
"""

# The arithmetic above, one module per concern: config (the configuration and its meta-device model), plan (what
# trains), weights (params, grads, optimizer state), tokens (prompt and caption lengths), stacks (activations),
# placement (model parallel), strategy_bytes (DDP, FSDP, DeepSpeed) and predict (`estimate` and `Estimate`).
# Every name the single estimator.py module offered is importable from here.
from alt_text_recipes.memory.estimator.model_files import image_processor_settings
from alt_text_recipes.memory.estimator.placement import (
    busiest_gpu,
    device_map_gpus,
    device_of,
    device_total,
    layers_per_device,
    module_device,
    per_device_load,
    planned_device_map,
)
from alt_text_recipes.memory.estimator.plan import TrainingPlan, is_lora_target, training_plan
from alt_text_recipes.memory.estimator.predict import (
    CUDA_CONTEXT_GB,
    Estimate,
    estimate,
    estimate_run,
    process_baseline_bytes,
)
from alt_text_recipes.memory.estimator.stacks import (
    STACK_BUILDERS,
    activation_bytes,
    describe_model_facts,
    fp32_weight,
    layer_stacks,
    outside_bytes,
    precision_of,
    stack_bytes,
    stack_modes,
)
from alt_text_recipes.memory.estimator.strategy_bytes import (
    deepspeed_bytes,
    fsdp_bytes,
    strategy_and_gpus,
    trainer_hidden_size,
)
from alt_text_recipes.memory.estimator.tokens import (
    CHAT_TEMPLATE_TOKENS,
    caption_token_count,
    prompt_token_count,
)
from alt_text_recipes.memory.estimator.weights import (
    DTYPE_BYTES,
    EIGHT_BIT_OPTIMIZERS,
    STATELESS_OPTIMIZERS,
    Weight,
    embedding_weight_names,
    flat_optimizer_bytes,
    optimizer_bytes,
    trainable_tensors,
    weight_tensors,
)
from alt_text_recipes.memory.parts import GB, MemoryParts
from alt_text_recipes.train.stack_shapes import Stack

__all__ = [
    "CHAT_TEMPLATE_TOKENS",
    "CUDA_CONTEXT_GB",
    "DTYPE_BYTES",
    "EIGHT_BIT_OPTIMIZERS",
    "Estimate",
    "GB",
    "MemoryParts",
    "STACK_BUILDERS",
    "STATELESS_OPTIMIZERS",
    "Stack",
    "TrainingPlan",
    "Weight",
    "activation_bytes",
    "busiest_gpu",
    "caption_token_count",
    "deepspeed_bytes",
    "describe_model_facts",
    "device_map_gpus",
    "device_of",
    "device_total",
    "embedding_weight_names",
    "estimate",
    "estimate_run",
    "flat_optimizer_bytes",
    "fp32_weight",
    "fsdp_bytes",
    "image_processor_settings",
    "is_lora_target",
    "layer_stacks",
    "layers_per_device",
    "module_device",
    "optimizer_bytes",
    "outside_bytes",
    "per_device_load",
    "planned_device_map",
    "precision_of",
    "process_baseline_bytes",
    "prompt_token_count",
    "stack_bytes",
    "stack_modes",
    "strategy_and_gpus",
    "trainable_tensors",
    "trainer_hidden_size",
    "training_plan",
    "weight_tensors",
]
