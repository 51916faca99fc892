"""Which distributed strategy a run uses, read from every place a user can name one.

In order of precedence:

  --strategy NAME            the estimator's own flag (names in STRATEGY_NAMES), with the settings the shipped
                             ds_configs/ use (buckets "auto", overlap_comm on).
  --deepspeed FILE|DICT      the Trainer's DeepSpeed config: zero_optimization.stage, offload_optimizer.device,
                             offload_param.device and the bucket sizes, "auto" values resolved as the HF
                             Trainer resolves them (HfTrainerDeepSpeedConfig.trainer_config_process/finalize:
                             reduce_bucket_size = hidden², stage3_prefetch_bucket_size = 0.9·hidden²,
                             stage3_param_persistence_threshold = 10·hidden; bf16/fp16.enabled from --bf16/--fp16).
  --fsdp / --fsdp_config     the Trainer's FSDP ("full_shard auto_wrap", "shard_grad_op", "offload", ...;
                             after TrainingArguments these live in fsdp_config: reshard_after_forward, cpu_offload).
  accelerate_config          a YAML as `accelerate config` writes it: distributed_type DEEPSPEED (its
                             deepspeed_config_file, or the inline zero_stage / offload_*_device keys), FSDP
                             (fsdp_reshard_after_forward or fsdp_sharding_strategy, fsdp_offload_params),
                             MULTI_GPU (DDP); its num_processes is the GPU count unless --num_gpus says otherwise.
  --device_map               model parallel on one machine.

Anything else is one process on one GPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from alt_text_recipes.data.errors import RecipeError
from alt_text_recipes.data.paths import REPO_ROOT, places_looked

FSDP_SHARDING = ["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD", "HYBRID_SHARD_ZERO2"]  # accelerate's order
_FSDP_SUFFIX = {
    "FULL_SHARD": "",
    "SHARD_GRAD_OP": "_grad_op",
    "HYBRID_SHARD": "_hybrid",
    "HYBRID_SHARD_ZERO2": "_hybrid_grad_op",
}
# DeepSpeed's own defaults (deepspeed/runtime/zero/config.py) for keys a config leaves out.
DS_DEFAULT_REDUCE_BUCKET = 500_000_000
DS_DEFAULT_PREFETCH_BUCKET = 50_000_000
DS_DEFAULT_PERSISTENCE_THRESHOLD = 100_000

STRATEGY_NAMES = [
    "single",
    "ddp",
    "fsdp",
    "fsdp_grad_op",
    "fsdp_hybrid",
    "fsdp_offload",
    "zero1",
    "zero2",
    "zero2_offload",
    "zero3",
    "zero3_offload",
    "model_parallel",
]


@dataclass
class Strategy:
    """A distributed strategy with the settings its memory depends on."""

    kind: str = "single"  # single, ddp, fsdp, deepspeed, model_parallel
    source: str = "default: no --deepspeed, --fsdp, accelerate_config or --device_map given"
    # DeepSpeed
    zero_stage: int = 0
    offload_optimizer: bool = False
    offload_param: bool = False
    reduce_bucket_size: int | str = "auto"  # elements; "auto" = hidden²
    overlap_comm: bool | None = None  # None: DeepSpeed's default (on for stage 3 only)
    prefetch_bucket_size: int | str = "auto"
    persistence_threshold: int | str = "auto"
    bf16_enabled: bool | str = (
        "auto"  # the config's bf16.enabled / fp16.enabled: true, false or "auto" (--bf16/--fp16)
    )
    fp16_enabled: bool | str = "auto"
    precision: str | None = None  # once resolved: "bf16", "fp16" or None (fp32)
    # FSDP
    sharding: str = "FULL_SHARD"
    fsdp_offload: bool = False
    # GPUs
    processes: int | None = None  # from the accelerate config
    machines: int = 1

    @property
    def name(self) -> str:
        if self.kind == "fsdp":
            return "fsdp" + _FSDP_SUFFIX[self.sharding] + ("_offload" if self.fsdp_offload else "")
        if self.kind == "deepspeed":
            if self.zero_stage < 3:
                return f"zero{self.zero_stage}" + ("_offload" if self.offload_optimizer else "")
            if self.offload_optimizer and self.offload_param:
                return "zero3_offload"
            return "zero3" + (
                "_optimizer_offload" if self.offload_optimizer else "_param_offload" if self.offload_param else ""
            )
        return self.kind

    def description(self) -> str:
        if self.kind == "deepspeed":
            text = f"deepspeed ZeRO-{self.zero_stage}"
            offloaded = [
                what for what, on in (("optimizer", self.offload_optimizer), ("params", self.offload_param)) if on
            ]
            if offloaded:
                text += f", {' and '.join(offloaded)} offloaded to CPU"
            return text
        if self.kind == "fsdp":
            return f"FSDP {self.sharding}" + (
                ", params, grads and optimizer offloaded to CPU" if self.fsdp_offload else ""
            )
        return {
            "single": "one process",
            "ddp": "data parallel (DDP)",
            "model_parallel": "model parallel (layers split over the GPUs)",
        }[self.kind]

    def resolved(self, hidden_size: int, bf16: bool, fp16: bool) -> "Strategy":
        """Settings with "auto" replaced as the HF Trainer replaces them."""

        def auto(value, filled):
            return filled if value == "auto" else int(float(value))

        bf16 = bf16 if self.bf16_enabled == "auto" else bool(self.bf16_enabled)
        fp16 = fp16 if self.fp16_enabled == "auto" else bool(self.fp16_enabled)
        precision = "bf16" if bf16 else "fp16" if fp16 else None
        overlap = self.overlap_comm if self.overlap_comm is not None else self.zero_stage == 3
        return Strategy(
            **{
                **self.__dict__,
                "reduce_bucket_size": auto(self.reduce_bucket_size, hidden_size**2),
                "prefetch_bucket_size": auto(self.prefetch_bucket_size, int(0.9 * hidden_size**2)),
                "persistence_threshold": auto(self.persistence_threshold, 10 * hidden_size),
                "precision": precision,
                "overlap_comm": overlap,
            }
        )


def strategy_from_name(name: str, source: str | None = None) -> Strategy:
    """--strategy NAME: the strategy with the settings the shipped configs use (buckets auto, overlap_comm on)."""
    source = source or f"--strategy {name}"
    if name in ("single", "ddp", "model_parallel"):
        return Strategy(kind=name, source=source)
    if name.startswith("fsdp"):
        rest = name[len("fsdp") :]
        offload = rest.endswith("_offload")
        rest = rest.removesuffix("_offload")
        sharding = {suffix: sharding for sharding, suffix in _FSDP_SUFFIX.items()}.get(rest)
        if sharding is not None:
            return Strategy(kind="fsdp", sharding=sharding, fsdp_offload=offload, source=source)
    if name.startswith("zero") and name[4:5].isdigit():
        stage, suffix = int(name[4]), name[5:]
        optimizer = suffix in ("_offload", "_optimizer_offload")
        param = suffix == "_param_offload" or (stage == 3 and suffix == "_offload")
        if suffix in ("", "_offload", "_optimizer_offload", "_param_offload") and stage <= 3:
            return Strategy(
                kind="deepspeed",
                zero_stage=stage,
                offload_optimizer=optimizer,
                offload_param=param,
                overlap_comm=True,
                source=source,
            )
    raise RecipeError(f"--strategy {name}: unknown; choose from {', '.join(STRATEGY_NAMES)}.")


def _find(path: str) -> Path:
    """A config file named relative to the current directory or to the repository."""
    for candidate in (Path(path), REPO_ROOT / path):
        if candidate.is_file():
            return candidate
    raise RecipeError(f"{path}: no such file (looked in {places_looked()}).")


def _offloaded(section) -> bool:
    return isinstance(section, dict) and str(section.get("device", "none")).lower() in ("cpu", "nvme")


def _enabled(settings: dict, key: str) -> bool | str:
    """bf16/fp16.enabled as the DeepSpeed config sets it; "auto" or absent follows --bf16/--fp16 (the Trainer
    fills "auto", accelerate adds the section from the mixed precision it is given)."""
    value = (settings.get(key) or {}).get("enabled", "auto")
    return value if isinstance(value, bool) else str(value).lower() == "true" if value != "auto" else "auto"


def deepspeed_strategy(config: str | dict, source: str) -> Strategy:
    """A DeepSpeed JSON (path or dict) as the Trainer reads it."""
    if isinstance(config, dict):
        settings = config
    else:
        try:
            settings = json.loads(_find(config).read_text())
        except json.JSONDecodeError as error:
            raise RecipeError(f"{config}: not a DeepSpeed JSON config ({error}).") from None
    zero = settings.get("zero_optimization") or {}
    return Strategy(
        kind="deepspeed",
        source=source,
        zero_stage=int(zero.get("stage", 0)),
        offload_optimizer=_offloaded(zero.get("offload_optimizer")),
        offload_param=_offloaded(zero.get("offload_param")),
        reduce_bucket_size=zero.get("reduce_bucket_size", DS_DEFAULT_REDUCE_BUCKET),
        overlap_comm=zero.get("overlap_comm"),
        prefetch_bucket_size=zero.get("stage3_prefetch_bucket_size", DS_DEFAULT_PREFETCH_BUCKET),
        persistence_threshold=zero.get("stage3_param_persistence_threshold", DS_DEFAULT_PERSISTENCE_THRESHOLD),
        bf16_enabled=_enabled(settings, "bf16"),
        fp16_enabled=_enabled(settings, "fp16"),
    )


def _sharding(value) -> str:
    """FSDP2's bool reshard_after_forward, or an FSDP1 strategy by name or number (1 = FULL_SHARD, as accelerate)."""
    if isinstance(value, bool):
        return "FULL_SHARD" if value else "SHARD_GRAD_OP"
    text = str(value).strip()
    if text.lower() in ("true", "false"):
        return "FULL_SHARD" if text.lower() == "true" else "SHARD_GRAD_OP"
    if text.isdigit() and 1 <= int(text) <= len(FSDP_SHARDING):
        return FSDP_SHARDING[int(text) - 1]
    if text.upper() in FSDP_SHARDING:
        return text.upper()
    raise RecipeError(f"FSDP sharding '{value}': not one of {', '.join(FSDP_SHARDING)} (or true/false).")


def fsdp_strategy(sharding_value, offload, source: str, processes: int | None = None, machines: int = 1) -> Strategy:
    sharding = _sharding(True if sharding_value is None else sharding_value)
    if sharding == "NO_SHARD":  # every GPU keeps everything and all-reduces gradients: DDP
        return Strategy(kind="ddp", source=source + " (FSDP NO_SHARD)", processes=processes, machines=machines)
    return Strategy(
        kind="fsdp",
        sharding=sharding,
        fsdp_offload=str(offload).lower() == "true",
        source=source,
        processes=processes,
        machines=machines,
    )


def trainer_fsdp_strategy(training_args) -> Strategy | None:
    """--fsdp / --fsdp_config, as TrainingArguments normalised them into fsdp_config."""
    if not getattr(training_args, "fsdp", None):
        return None
    settings = training_args.fsdp_config or {}
    if isinstance(settings, str):
        settings = json.loads(_find(settings).read_text())
    settings = {key.removeprefix("fsdp_"): value for key, value in settings.items()}
    sharding = settings.get("reshard_after_forward", settings.get("sharding_strategy"))
    return fsdp_strategy(
        sharding, settings.get("cpu_offload", settings.get("offload_params", False)), "--fsdp/--fsdp_config"
    )


def accelerate_strategy(accelerate_config: str) -> Strategy:
    """The strategy and process count of an accelerate config file."""
    import yaml

    settings = yaml.safe_load(_find(accelerate_config).read_text()) or {}
    kind = settings.get("distributed_type", "NO")
    processes, machines = settings.get("num_processes"), int(settings.get("num_machines") or 1)
    source = f"accelerate_config {accelerate_config}"
    if kind == "DEEPSPEED":
        ds = settings.get("deepspeed_config") or {}
        if ds.get("deepspeed_config_file"):
            strategy = deepspeed_strategy(ds["deepspeed_config_file"], f"{source} -> {ds['deepspeed_config_file']}")
        else:  # accelerate's inline keys (its defaults: stage 2, nothing offloaded); DeepSpeed's bucket defaults
            strategy = Strategy(
                kind="deepspeed",
                source=source,
                zero_stage=int(ds.get("zero_stage", 2)),
                offload_optimizer=_offloaded({"device": ds.get("offload_optimizer_device", "none")}),
                offload_param=_offloaded({"device": ds.get("offload_param_device", "none")}),
                reduce_bucket_size=DS_DEFAULT_REDUCE_BUCKET,
                prefetch_bucket_size=DS_DEFAULT_PREFETCH_BUCKET,
                persistence_threshold=DS_DEFAULT_PERSISTENCE_THRESHOLD,
            )
    elif kind == "FSDP":
        fsdp = settings.get("fsdp_config") or {}
        strategy = fsdp_strategy(
            fsdp.get("fsdp_reshard_after_forward", fsdp.get("fsdp_sharding_strategy")),
            fsdp.get("fsdp_offload_params", False),
            source,
        )
    elif kind == "MULTI_GPU":
        strategy = Strategy(kind="ddp", source=source)
    else:
        strategy = Strategy(kind="single", source=source)
    strategy.processes, strategy.machines = processes, machines
    return strategy


def requested_strategy(script_args, training_args, name: str | None = None) -> Strategy:
    """The strategy the run's arguments ask for (see the module docstring for the order)."""
    accelerate_config = getattr(getattr(script_args, "preset", None), "accelerate_config", None)
    from_accelerate = accelerate_strategy(accelerate_config) if accelerate_config else None
    if name:
        strategy = strategy_from_name(name)
    elif getattr(training_args, "deepspeed", None):
        value = training_args.deepspeed
        strategy = deepspeed_strategy(value, "--deepspeed " + (value if isinstance(value, str) else "(a dict)"))
    elif getattr(training_args, "fsdp", None):
        strategy = trainer_fsdp_strategy(training_args)
    elif from_accelerate is not None and (
        from_accelerate.kind != "single" or not getattr(script_args, "device_map", None)
    ):
        return from_accelerate
    elif getattr(script_args, "device_map", None):
        strategy = Strategy(kind="model_parallel", source=f"--device_map {script_args.device_map}")
    else:
        strategy = Strategy()
    if from_accelerate is not None:  # the launcher's process count still applies
        strategy.processes, strategy.machines = from_accelerate.processes, from_accelerate.machines
    return strategy
