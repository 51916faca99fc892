"""How busy the hardware was between two memory reports: GPU utilisation, allocated vs reserved memory and
power (NVML, through the `nvidia-ml-py` package) on CUDA; the process's CPU utilisation everywhere.

Every figure is optional: without NVML (no driver, no package, not an NVIDIA GPU) the GPU utilisation and
power are simply absent, and a reading that fails is left out rather than stopping the training run.

Fields (logged as `memory/<name>` beside the breakdown):
- `cpu_util_pct`: CPU time of this process (all its threads) over wall time since the previous report, in % of
  one core (200 = two cores busy); DataLoader worker processes are not included.
- `cpu_cores`: the cores this process may run on.
- `gpu_util_pct`: NVML's utilisation of the GPU (% of the last sample period in which a kernel ran).
- `gpu_allocated_gb` / `gpu_reserved_gb`: bytes in live tensors (`torch.cuda.memory_allocated`) and bytes the
  caching allocator holds from the driver (`torch.cuda.memory_reserved`); the gap is cache and fragmentation.
- `gpu_power_w`: the board's power draw now, in watts (NVML).
"""

from __future__ import annotations

import os
import time

import torch

from alt_text_recipes.data.library_internals import nvml_device_index

GB = 1024**3


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _nvml_index(device: torch.device) -> int:
    """NVML numbers every GPU of the machine; CUDA only the visible ones (CUDA_VISIBLE_DEVICES)."""
    try:
        return nvml_device_index(device)
    except Exception:  # noqa: BLE001 - a private helper of torch: fall back to the CUDA index
        return device.index or 0


def nvml_readings(device: torch.device) -> dict[str, float]:
    """GPU utilisation (%) and power (W) from NVML; {} where NVML is not there."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(_nvml_index(device))
    except Exception:  # noqa: BLE001 - no package, no driver, no such device: telemetry is optional
        return {}
    readings: dict[str, float] = {}
    try:
        readings["gpu_util_pct"] = float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except Exception:  # noqa: BLE001
        pass
    try:
        readings["gpu_power_w"] = round(pynvml.nvmlDeviceGetPowerUsage(handle) / 1000, 1)  # milliwatts
    except Exception:  # noqa: BLE001
        pass
    return readings


class Telemetry:
    """Samples the hardware at each report; CPU utilisation is over the time since the previous sample."""

    def __init__(self):
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def sample(self, device: torch.device | str | None = None) -> dict[str, float]:
        device = torch.device(device) if device is not None else torch.device("cpu")
        wall, cpu = time.perf_counter(), time.process_time()
        elapsed = wall - self._wall
        values: dict[str, float] = {
            "cpu_util_pct": round(100 * (cpu - self._cpu) / elapsed, 1) if elapsed > 0 else 0.0,
            "cpu_cores": float(cpu_cores()),
        }
        self._wall, self._cpu = wall, cpu
        if device.type == "cuda":
            try:
                values["gpu_allocated_gb"] = round(torch.cuda.memory_allocated(device) / GB, 6)
                values["gpu_reserved_gb"] = round(torch.cuda.memory_reserved(device) / GB, 6)
            except Exception:  # noqa: BLE001
                pass
            values.update(nvml_readings(device))
        return values


def describe(values: dict[str, float]) -> str:
    """The short text the `[memory]` line ends with: GPU figures on a GPU run, CPU figures on a CPU run."""
    parts = []
    if "gpu_util_pct" in values:
        parts.append(f"GPU util {values['gpu_util_pct']:.0f}%")
    if "gpu_reserved_gb" in values:
        parts.append(f"allocated {values['gpu_allocated_gb']:.2f} / reserved {values['gpu_reserved_gb']:.2f} GB")
    if "gpu_power_w" in values:
        parts.append(f"{values['gpu_power_w']:.0f} W")
    if not parts and "cpu_util_pct" in values:
        parts.append(f"CPU {values['cpu_util_pct']:.0f}% of a core ({values['cpu_cores']:.0f} cores)")
    return " | ".join(parts)
