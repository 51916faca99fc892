"""Predict a recipe's training memory before any weight is loaded.

The model is built from its configuration on the meta device (no memory, no download: the configs
of the four BLIP-2 variants ship in `data/model_configs/`), so parameter counts are exact. Then, per
GPU, in bytes:

  params      = each parameter x the bytes of the dtype it is held in: `--dtype` (transformers keeps
                the modules a model lists in `_keep_in_fp32_modules` -- BLIP-2's Q-Former, T5's `wo` --
                in fp32 only for fp16 loads, not bf16); a 4-bit (QLoRA) linear weight takes 0.5 byte
                plus a 4-byte absmax per 64 weights, except the output layer and those fp32-listed
                modules, which are not quantized; `prepare_model_for_kbit_training` then puts every
                weight that is not 4-bit in fp32; LoRA adapters are fp32.
  grads       = trainable parameters x their dtype's bytes.
  optimizer   = AdamW (torch): two moments in the parameter's dtype (8 B/param fp32, 4 B/param bf16);
                8-bit AdamW (bitsandbytes): 2 B/param + a 4-byte absmax per 256 for tensors of at least
                4096 elements, fp32 moments (8 B/param) below that and for embeddings (the Trainer
                keeps those in 32 bits); SGD without momentum: 0.
  activations = what autograd saves for backward, per micro-batch: per transformer layer about
                8·s·h + 2·s·f elements (layer-norm, projection and attention inputs; q, k, v and the
                attention output; the MLP's two inputs; h hidden, f MLP width, s sequence length;
                gated MLPs save one more s·f; eager attention adds the heads·s² probabilities) in the
                compute dtype, times the batch size. Frozen layers with nothing trainable before
                them save nothing; LoRA layers about 6·s·h + s·f. Activation checkpointing keeps only
                each layer's input (s·h) plus one layer recomputed at a time. The loss adds the fp32
                log-probabilities over the vocabulary (s·V).
  other       = allocator slack and temporaries: 10% of the above. On CPU the process itself
                (Python, torch and the libraries, measured in this process) is added, since a
                CPU run's peak is the whole process.

Strategies divide as they do: DDP keeps a full copy per GPU plus gradient buckets (one more copy of
the gradients); FSDP (FULL_SHARD) divides params, grads and optimizer state by the GPU count and adds
the largest layer gathered; DeepSpeed ZeRO-2 with CPU offload keeps bf16 params on each GPU, moves
fp32 master weights, moments (12 B/param) and fp32 gradients (4 B/param; with gradient accumulation
also a buffer in the training dtype) to the host, leaving two gradient buckets of h² on the GPU.
"""

from __future__ import annotations

import functools
import json
import math
import resource
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, PretrainedConfig

from .modeling import DEFAULT_LORA_TARGETS
from .paths import REPO_ROOT, resolve_local

GB = 1024**3
SHIPPED_CONFIGS = REPO_ROOT / "data" / "model_configs"
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 4, None: 4}
EIGHT_BIT_OPTIMIZERS = {"adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit", "adam8bit"}
STATELESS_OPTIMIZERS = {"sgd"}
CUDA_CONTEXT_GB = 0.5  # what the CUDA context and kernels take outside the allocator's count


@dataclass
class Estimate:
    model: str
    strategy: str
    num_gpus: int
    num_params: int
    trainable_params: int
    params_gb: float
    grads_gb: float
    optimizer_gb: float
    activations_gb: float
    other_gb: float
    total_gb: float
    host_gb: float
    gpu_memory_gb: float
    fits: bool
    device: str
    parts: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def table(self) -> str:
        rows = [("params", self.params_gb), ("grads", self.grads_gb), ("optimizer state", self.optimizer_gb),
                ("activations", self.activations_gb), ("other", self.other_gb), ("total per GPU", self.total_gb)]
        lines = [f"{self.model} | {self.strategy} on {self.num_gpus} GPU(s) | {self.num_params:,} parameters, "
                 f"{self.trainable_params:,} trainable"]
        lines += [f"  {name:<16} {value:9.2f} GB" for name, value in rows]
        lines.append(f"  {'host (CPU) RAM':<16} {self.host_gb:9.2f} GB")
        verdict = "fits" if self.fits else "OOM"
        where = f"a {self.gpu_memory_gb:g} GB GPU" if self.device == "cuda" else "this CPU run"
        lines.append(f"  -> {verdict} on {where}")
        return "\n".join(lines)


def load_config(name_or_path: str) -> PretrainedConfig:
    """A model's configuration without its weights: shipped copy, local folder, or the Hub."""
    shipped = SHIPPED_CONFIGS / name_or_path.split("/")[-1]
    if (shipped / "config.json").exists():
        return AutoConfig.from_pretrained(shipped)
    return AutoConfig.from_pretrained(resolve_local(name_or_path))


def meta_model(config: PretrainedConfig) -> torch.nn.Module:
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config)


def _in_fp32_module(name: str, keep_in_fp32: list[str]) -> bool:
    return any(part in keep_in_fp32 for part in name.split("."))


def _lora_targets(model, targets) -> set[str]:
    if targets:
        return set(targets)
    return set(DEFAULT_LORA_TARGETS[model.config.get_text_config().model_type])


def _is_quantized_linear(name: str, module: torch.nn.Module, keep_in_fp32: list[str], output_layer) -> bool:
    return isinstance(module, torch.nn.Linear) and module is not output_layer and not _in_fp32_module(name, keep_in_fp32)


def weight_bytes(model, model_args) -> tuple[dict[str, int], int, int, list[tuple[str, int, int]]]:
    """Bytes of parameters per top-level part, total count, trainable count, and the trainable
    tensors as (name, numel, bytes per element)."""
    keep_in_fp32 = list(getattr(model, "_keep_in_fp32_modules", None) or [])
    base_bytes = DTYPE_BYTES[model_args.dtype]
    quantized = bool(model_args.load_in_4bit)
    output_layer = model.get_output_embeddings()
    targets = _lora_targets(model, model_args.lora_target_modules) if model_args.use_peft else set()
    parts: dict[str, int] = {}
    trainable: list[tuple[str, int, int]] = []
    total = 0
    seen: set[int] = set()  # tied weights (embeddings and output layer) count once
    for module_name, module in model.named_modules():
        quantize = quantized and _is_quantized_linear(module_name, module, keep_in_fp32, output_layer)
        for param_name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            name = f"{module_name}.{param_name}" if module_name else param_name
            numel = param.numel()
            total += numel
            if quantize and param_name == "weight":
                size = numel // 2 + 4 * math.ceil(numel / 64)  # packed NF4 + absmax per block of 64
            elif quantized or (model_args.dtype == "float16" and _in_fp32_module(name, keep_in_fp32)):
                size = 4 * numel
            else:
                size = base_bytes * numel
            part = name.split(".")[0]
            parts[part] = parts.get(part, 0) + size
            if not model_args.use_peft:
                trainable.append((name, numel, size // numel if not quantize else 0))
        if module_name and module_name.split(".")[-1] in targets and isinstance(module, torch.nn.Linear):
            lora = model_args.lora_r * (module.in_features + module.out_features)  # A (r x in) and B (out x r)
            parts["lora"] = parts.get("lora", 0) + 4 * lora  # peft keeps adapters in fp32
            trainable += [(f"{module_name}.lora_A", model_args.lora_r * module.in_features, 4),
                          (f"{module_name}.lora_B", module.out_features * model_args.lora_r, 4)]
    return parts, total, sum(n for _, n, _ in trainable), trainable


def optimizer_bytes(trainable: list[tuple[str, int, int]], optim: str, embedding_weights: set[str] = frozenset()) -> int:
    if optim in STATELESS_OPTIMIZERS:
        return 0
    if optim in EIGHT_BIT_OPTIMIZERS:
        total = 2 * 256 * 4  # the two quantization maps, shared by every tensor
        for name, numel, _ in trainable:
            # The Trainer keeps embeddings' state in 32 bits; bitsandbytes does for tensors under 4096.
            if numel >= 4096 and name not in embedding_weights:
                total += 2 * numel + 2 * 4 * math.ceil(numel / 256)
            else:
                total += 8 * numel
        return total
    # torch AdamW: exp_avg and exp_avg_sq in the parameter's dtype, and a 4-byte step per tensor.
    return sum(2 * numel * size + 4 for _, numel, size in trainable)


@dataclass
class Stack:
    """One stack of identical transformer layers, as the activation arithmetic sees it."""
    name: str
    layers: int
    seq: int
    hidden: int
    mlp: int
    heads: int
    gated: bool = False
    extra_per_layer: int = 0  # elements beyond a self-attention layer (cross-attention)

    def layer_elements(self, mode: str, eager: bool) -> int:
        s, h, f = self.seq, self.hidden, self.mlp
        if mode == "full":
            elements = 8 * s * h + (3 if self.gated else 2) * s * f + self.extra_per_layer
        else:  # LoRA: frozen projections need no saved input, adapters and nonlinearities do
            elements = 6 * s * h + (2 if self.gated else 1) * s * f + self.extra_per_layer
        return elements + (self.heads * s * s if eager else 0)

    def elements(self, mode: str, eager: bool, checkpointed: bool) -> int:
        if mode == "frozen":
            return 0
        if checkpointed:  # each layer's input, plus one layer recomputed during backward
            return self.layers * self.seq * self.hidden + self.layer_elements(mode, eager)
        return self.layers * self.layer_elements(mode, eager)


def blip2_stacks(config, caption_tokens: int, prompt_tokens: int) -> tuple[list[Stack], int]:
    """The layer stacks of a BLIP-2 model and the length the loss runs over."""
    vision, qformer, text = config.vision_config, config.qformer_config, config.get_text_config()
    patches = (vision.image_size // vision.patch_size) ** 2 + 1
    queries = config.num_query_tokens
    cross = 2 * patches * qformer.hidden_size + 4 * queries * qformer.hidden_size
    stacks = [
        Stack("vision", vision.num_hidden_layers, patches, vision.hidden_size, vision.intermediate_size,
              vision.num_attention_heads),
        Stack("qformer", qformer.num_hidden_layers, queries, qformer.hidden_size, qformer.intermediate_size,
              qformer.num_attention_heads, extra_per_layer=cross // qformer.cross_attention_frequency),
    ]
    if text.is_encoder_decoder:  # T5: image tokens + prompt into the encoder, caption out of the decoder
        gated = "gated" in text.feed_forward_proj
        encoder_seq, decoder_seq = queries + prompt_tokens, caption_tokens
        stacks.append(Stack("language_encoder", text.num_layers, encoder_seq, text.d_model, text.d_ff, text.num_heads, gated))
        stacks.append(Stack("language_decoder", text.num_decoder_layers, decoder_seq, text.d_model, text.d_ff,
                            text.num_heads, gated, extra_per_layer=4 * decoder_seq * text.d_model + 2 * encoder_seq * text.d_model))
        return stacks, decoder_seq
    seq = queries + prompt_tokens + caption_tokens
    stacks.append(Stack("language_model", text.num_hidden_layers, seq, text.hidden_size,
                        getattr(text, "ffn_dim", None) or text.intermediate_size, text.num_attention_heads))
    return stacks, seq


def activation_bytes(config, model_args, training_args, caption_tokens: int, prompt_tokens: int) -> dict[str, int]:
    stacks, loss_seq = blip2_stacks(config, caption_tokens, prompt_tokens)
    compute_bytes = 2 if (training_args.bf16 or model_args.dtype == "bfloat16") else 4
    eager = model_args.attn_implementation == "eager"
    batch = training_args.per_device_train_batch_size
    result = {}
    for stack in stacks:
        if model_args.use_peft:
            mode = "lora" if stack.name.startswith("language") else "frozen"  # nothing trains before the LM
        else:
            mode = "full"
        result[stack.name] = batch * compute_bytes * stack.elements(mode, eager, training_args.gradient_checkpointing)
    vocab = config.get_text_config().vocab_size
    result["logits"] = batch * 4 * loss_seq * vocab  # fp32 log-probabilities kept for the loss's backward
    return result


@functools.cache
def process_baseline_bytes() -> int:
    """This process's resident memory once it holds the libraries a training run loads (measured
    once: later estimates in the same process must not count what earlier ones allocated)."""
    import importlib

    for library in ("transformers.trainer", "peft", "bitsandbytes", "deepspeed", "datasets"):
        try:
            importlib.import_module(library)
        except ImportError:
            pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def strategy_of(accelerate_config: str | None) -> tuple[str, int | None]:
    """Read the strategy and process count from an accelerate config file."""
    if not accelerate_config:
        return "single", None
    import yaml

    path = Path(accelerate_config) if Path(accelerate_config).exists() else REPO_ROOT / accelerate_config
    settings = yaml.safe_load(path.read_text())
    kind = settings.get("distributed_type", "NO")
    processes = settings.get("num_processes")
    if kind == "DEEPSPEED":
        return "zero2_offload", processes
    if kind == "FSDP":
        return "fsdp", processes
    if kind == "MULTI_GPU":
        return "ddp", processes
    return "single", processes


def estimate(
    script_args,
    training_args,
    model_args,
    caption_tokens: int,
    prompt_tokens: int = 1,
    gpu_memory_gb: float = 80.0,
    num_gpus: int | None = None,
    strategy: str | None = None,
    device: str = "cuda",
) -> Estimate:
    config = load_config(model_args.model_name_or_path)
    model = meta_model(config)
    parts, num_params, num_trainable, trainable = weight_bytes(model, model_args)
    file_strategy, file_gpus = strategy_of(getattr(script_args, "accelerate_config", None))
    strategy = strategy or file_strategy
    num_gpus = num_gpus or file_gpus or 1

    params = sum(parts.values())
    grads = sum(numel * size for _, numel, size in trainable)
    embeddings = {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, torch.nn.Embedding)}
    optimizer = optimizer_bytes(trainable, training_args.optim, embeddings)
    activations = activation_bytes(config, model_args, training_args, caption_tokens, prompt_tokens)
    host = 0
    if strategy == "ddp":
        grads *= 2  # gradient buckets hold a second copy for the all-reduce
    elif strategy == "fsdp":
        largest_layer = max(sum(p.numel() for p in m.parameters()) for m in model.modules()
                            if type(m).__name__ in _wrap_classes(model))
        gathered = 2 * largest_layer * DTYPE_BYTES[model_args.dtype]  # current + prefetched unit
        params, grads, optimizer = params / num_gpus + gathered, grads / num_gpus, optimizer / num_gpus
    elif strategy == "zero2_offload":
        # Host: fp32 master weights and two moments (12 B), the fp32 gradient partition (4 B), and
        # with accumulation a gradient buffer in the training dtype.
        host_optimizer = 12 * num_trainable
        host_grads = (4 + (DTYPE_BYTES[model_args.dtype] if training_args.gradient_accumulation_steps > 1 else 0)) \
            * num_trainable
        text_hidden = config.get_text_config().hidden_size
        bucket_grads = 2 * text_hidden * text_hidden * DTYPE_BYTES[model_args.dtype]  # two reduce buckets of h^2
        if device == "cpu":  # one process holds both sides
            grads, optimizer = host_grads, host_optimizer
        else:
            grads, optimizer, host = bucket_grads, 0, host_optimizer + host_grads
    counted = params + grads + optimizer + sum(activations.values())
    other = 0.10 * counted
    if device == "cpu":
        other += process_baseline_bytes()
    total = counted + other
    capacity = gpu_memory_gb * GB
    fits = total + (CUDA_CONTEXT_GB * GB if device == "cuda" else 0) <= capacity
    return Estimate(
        model=model_args.model_name_or_path, strategy=strategy, num_gpus=num_gpus, num_params=num_params,
        trainable_params=num_trainable, params_gb=params / GB, grads_gb=grads / GB, optimizer_gb=optimizer / GB,
        activations_gb=sum(activations.values()) / GB, other_gb=other / GB, total_gb=total / GB,
        host_gb=host / GB, gpu_memory_gb=gpu_memory_gb, fits=fits, device=device,
        parts={"params_by_part_gb": {k: v / GB for k, v in parts.items()},
               "activations_by_part_gb": {k: v / GB for k, v in activations.items()}},
    )


def _wrap_classes(model) -> set[str]:
    return set(getattr(model, "_no_split_modules", None) or [])
