"""Where training memory goes: parameters, gradients, optimizer state, activations and the rest.

Parameters, gradients and optimizer state are counted from the tensors themselves (unique storages,
so tied or shared weights count once), which works the same on CPU and GPU. Activations are measured
with `torch.autograd.graph.saved_tensors_hooks`: the storages autograd keeps for the backward pass of
one micro-batch, less the parameters. Under activation checkpointing the checkpointed layers keep
only their inputs, so the figure drops as it should. "Other" is the measured peak of the device (GPU:
`torch.cuda.max_memory_allocated`) or of the process (CPU: peak resident set size, which includes the
Python runtime and libraries) less the four counted parts. Each report also carries how busy the
hardware was (recipes/alt_text_recipes/memory/telemetry.py: GPU utilisation, allocated vs reserved, power; CPU
utilisation).
"""

from __future__ import annotations

import resource
import sys
import weakref
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import torch
from transformers import TrainerCallback

from alt_text_recipes.data.logs import get_logger
from alt_text_recipes.memory.parts import GB, MemoryParts
from alt_text_recipes.memory.telemetry import Telemetry, describe

logger = get_logger(__name__)


def format_bytes(count: int) -> str:
    """GB for real models, MB for the tiny ones, so neither reads as 0.000."""
    return f"{count / GB:.2f} GB" if count >= GB / 10 else f"{count / 2**20:.2f} MB"


def _storage_key(tensor: torch.Tensor) -> tuple[int, int] | None:
    if tensor.device.type == "meta":
        return None
    storage = tensor.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def unique_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes held by the storages behind `tensors`, each storage once."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        key = _storage_key(tensor)
        if key is not None and key[1]:
            seen[key[0]] = key[1]
    return sum(seen.values())


def parameter_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """Parameters plus the block scales a 4-bit (bitsandbytes) weight keeps beside its packed data."""
    tensors = []
    for param in model.parameters():
        tensors.append(param)
        quant_state = getattr(param, "quant_state", None)
        if quant_state is not None and isinstance(getattr(quant_state, "absmax", None), torch.Tensor):
            tensors.append(quant_state.absmax)
    return tensors


def optimizer_state_tensors(optimizer) -> list[torch.Tensor]:
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
    tensors = []
    for state in inner.state.values():
        tensors.extend(value for value in state.values() if isinstance(value, torch.Tensor))
    return tensors


def zero_offload_tensors(optimizer) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """DeepSpeed ZeRO-1/2 keeps fp32 master weights beside the optimizer's moments, and gradients in
    its own buffers rather than in `param.grad`: (master weights, gradient buffers)."""
    zero = optimizer
    while zero is not None and not hasattr(zero, "single_partition_of_fp32_groups"):
        zero = getattr(zero, "optimizer", None)
    if zero is None:
        return [], []
    masters = list(zero.single_partition_of_fp32_groups)
    grads = [master.grad for master in masters if master.grad is not None]
    grads += list(getattr(zero, "accumulated_grads_in_cpu", {}).values())
    return masters, grads


def peak_memory(device: torch.device | str | None = None) -> tuple[int, str]:
    """Peak bytes and what they measure: the GPU allocator when training on CUDA, else the process.
    `device` is the one training runs on (a CPU run on a machine with a GPU measures the process);
    without it, the GPU whenever CUDA has been initialised."""
    on_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_initialized()
    if on_cuda and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(device), "GPU max allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss * (1 if sys.platform == "darwin" else 1024), "process peak RSS"


@dataclass
class MemoryBreakdown:
    step: int
    params: int
    grads: int
    optimizer: int
    activations: int
    peak: int
    peak_source: str
    grads_on_cpu: int = 0  # offloaded (DeepSpeed) parts, counted in grads / optimizer too
    optimizer_on_cpu: int = 0
    activations_by_region: dict[str, int] = field(default_factory=dict)  # when the callback is given regions
    telemetry: dict[str, float] = field(default_factory=dict)  # utilisation, reserved, power (telemetry.py)

    @property
    def other(self) -> int:
        counted = self.params + self.grads + self.optimizer + self.activations
        if self.peak_source.startswith("GPU"):
            counted -= self.optimizer_on_cpu + self.grads_on_cpu  # offloaded parts are not in the GPU's peak
        return max(0, self.peak - counted)

    @property
    def parts(self) -> MemoryParts:
        """The measured parts, as the estimate and the reports tell them."""
        return MemoryParts(self.params, self.grads, self.optimizer, self.activations, self.other)

    def as_log(self) -> dict[str, float]:
        figures = {
            **asdict(self.parts),
            "grads_on_cpu": self.grads_on_cpu,
            "optimizer_on_cpu": self.optimizer_on_cpu,
            "peak": self.peak,
        }
        log = {f"memory/{name}_gb": round(value / GB, 9) for name, value in figures.items()}
        return {**log, **{f"memory/{name}": value for name, value in self.telemetry.items()}}

    def line(self) -> str:
        return (
            f"[memory] step {self.step} | params {format_bytes(self.params)}"
            f" | grads {format_bytes(self.grads)} (on CPU {format_bytes(self.grads_on_cpu)})"
            f" | optimizer {format_bytes(self.optimizer)} (on CPU {format_bytes(self.optimizer_on_cpu)})"
            f" | activations {format_bytes(self.activations)} | other {format_bytes(self.other)}"
            f" | peak {format_bytes(self.peak)} ({self.peak_source})"
        ) + (f" | {describe(self.telemetry)}" if self.telemetry else "")


class SavedActivationMeter:
    """Measures the bytes autograd saves for backward, per micro-batch, excluding parameters.

    With `regions` ({name: modules}), each saved storage is also put to the region whose module was
    running when it was first saved (the innermost, for nested regions); storages saved outside every
    region go to "outside". Forward hooks mark the regions: transformers checkpoints a layer's `forward`,
    inside its hooks, so the inputs a checkpointed layer keeps count in its region.

    What counts is what is still held when backward starts (the first unpack): tensors saved by a part of
    the graph that no longer leads to the loss (a frozen tower's checkpointed inputs, a vision layer after
    the one whose features are used) are freed with it during the forward pass and are not counted.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        regions: dict[str, list[torch.nn.Module]] | None = None,
        exclude: set[int] = frozenset(),
    ):
        # parameters (and `exclude`: storages counted elsewhere) are not activations
        self._parameter_storages = {key[0] for p in model.parameters() if (key := _storage_key(p))} | set(exclude)
        self._current: dict[int, int] = {}
        self._tensors: dict[int, list[weakref.ref]] = {}  # storage -> the saved tensors that hold it
        self._at_backward: set[int] | None = None  # storages still held when backward started
        self._region_of: dict[int, str] = {}
        self._active: list[str] = []
        self.peak = 0
        self.peak_by_region: dict[str, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._handles = []
        for name, modules in (regions or {}).items():
            for module in modules:
                self._handles.append(module.register_forward_pre_hook(lambda *_, name=name: self._enter(name)))
                self._handles.append(module.register_forward_hook(lambda *_: self._leave()))

    def _enter(self, region: str) -> None:
        self._active.append(region)

    def _leave(self) -> None:  # returns None: a forward hook's return value would replace the output
        self._active.pop()

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key is not None and key[0] not in self._parameter_storages:
            self._current[key[0]] = key[1]
            self._tensors.setdefault(key[0], []).append(weakref.ref(tensor))
            self._region_of.setdefault(key[0], self._active[-1] if self._active else "outside")
        return tensor

    def _unpack(self, tensor: torch.Tensor) -> torch.Tensor:
        if self._at_backward is None:
            self._at_backward = {
                storage for storage, refs in self._tensors.items() if any(r() is not None for r in refs)
            }
        return tensor

    def start(self) -> None:
        self._hooks.__enter__()

    def end_micro_batch(self) -> None:
        if self._at_backward is not None:
            self._current = {storage: size for storage, size in self._current.items() if storage in self._at_backward}
        total = sum(self._current.values())
        if total >= self.peak:
            self.peak = total
            by_region: dict[str, int] = {}
            for storage, size in self._current.items():
                region = self._region_of[storage]
                by_region[region] = by_region.get(region, 0) + size
            self.peak_by_region = by_region
        self._current, self._region_of, self._tensors, self._at_backward = {}, {}, {}, None

    def stop(self) -> int:
        self.end_micro_batch()
        self._hooks.__exit__(None, None, None)
        for handle in self._handles:
            handle.remove()
        return self.peak


class MemoryBreakdownCallback(TrainerCallback):
    """Prints and logs the memory breakdown at step 0, step 1 and every `report_steps` steps.

    Gradients and optimizer state are read right after the optimizer step (before gradients are
    zeroed); activations are measured only on reported steps, so other steps pay nothing.
    """

    def __init__(
        self,
        report_steps: int = 50,
        regions: Callable[[torch.nn.Module], dict[str, list[torch.nn.Module]]] | None = None,
    ):
        self.report_steps = report_steps
        self.regions = regions  # model -> {name: modules}: activations are also measured per region
        self.trainer = None  # set by the caller so reports also go to the Trainer's logs and reporters
        self.reports: list[MemoryBreakdown] = []
        self._meter: SavedActivationMeter | None = None
        self._meter_regions: dict[str, int] = {}
        self._pending: MemoryBreakdown | None = None
        self._telemetry, self._device = Telemetry(), None

    def _is_report_step(self, step: int) -> bool:
        return step == 1 or (self.report_steps > 0 and step % self.report_steps == 0)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self._device = args.device  # where training runs: a CPU run on a GPU machine measures the process
        params = unique_bytes(parameter_tensors(model))
        peak, peak_source = peak_memory(self._device)
        self._report(
            state,
            MemoryBreakdown(
                state.global_step, params, grads=0, optimizer=0, activations=0, peak=peak, peak_source=peak_source
            ),
        )

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self._is_report_step(state.global_step + 1):
            self._meter = SavedActivationMeter(model, self.regions(model) if self.regions else None)
            self._meter.start()

    def on_substep_end(self, args, state, control, **kwargs):
        if self._meter is not None:
            self._meter.end_micro_batch()

    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self._meter is None:
            return
        activations = self._meter.stop()
        self._meter_regions, self._meter = self._meter.peak_by_region, None
        master_weights, zero_grads = zero_offload_tensors(optimizer)
        optimizer_tensors = (optimizer_state_tensors(optimizer) if optimizer is not None else []) + master_weights
        grads = [p.grad for p in model.parameters() if p.grad is not None] + zero_grads
        on_accelerator = next(model.parameters()).device.type != "cpu"
        peak, peak_source = peak_memory(self._device)
        self._pending = MemoryBreakdown(
            step=state.global_step + 1,  # the Trainer counts the step after this event
            params=unique_bytes(parameter_tensors(model)),
            grads=unique_bytes(grads),
            grads_on_cpu=unique_bytes(g for g in grads if g.device.type == "cpu") if on_accelerator else 0,
            optimizer=unique_bytes(optimizer_tensors),
            optimizer_on_cpu=unique_bytes(t for t in optimizer_tensors if t.device.type == "cpu")
            if on_accelerator
            else 0,
            activations=activations,
            activations_by_region=dict(self._meter_regions),
            peak=peak,
            peak_source=peak_source,
        )

    def on_step_end(self, args, state, control, **kwargs):
        if self._pending is not None:
            # Trainer.log() ends in on_log, which clears should_log; keep the Trainer's own
            # decision to log the loss at this step.
            should_log = control.should_log
            self._report(state, self._pending)
            control.should_log = should_log
            self._pending = None

    def _report(self, state, report: MemoryBreakdown) -> None:
        if not report.telemetry:
            report.telemetry = self._telemetry.sample(self._device)
        self.reports.append(report)
        logger.info(report.line())
        if self.trainer is not None:
            self.trainer.log(report.as_log())
