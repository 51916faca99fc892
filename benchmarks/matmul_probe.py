"""Measure this device's dense bf16 matrix-multiply peak (TFLOP/s): the denominator of MFU.

    python benchmarks/matmul_probe.py --out probe.json          # GPU: 4096..16384 square bf16 products
    python benchmarks/matmul_probe.py --device cpu --quick      # CPU: small products, a second or two

A datasheet's peak is not what a GPU reaches (an H100 SXM is sold as 989 dense bf16 TFLOP/s; cuBLAS reaches
about 800), so model FLOP/s are divided by what the same device's best matrix product measured here, on random
data (zeros run faster: the tensor cores draw less power). For each size: a few untimed products, then the
best of several timed runs of back-to-back products. The JSON also records the device's name and memory, which
`benchmarks/gpu_check.py` uses as the GPU's capacity, and the versions that produced the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

GPU_SIZES = (4096, 8192, 16384)
CPU_SIZES = (128, 256)  # bf16 on a CPU without AMX runs at about a GFLOP/s: keep it short


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(size: int, dtype: torch.dtype, device: torch.device, products: int, repeats: int) -> float:
    """Best TFLOP/s of `repeats` timed runs of `products` size×size×size products (2·n³ FLOPs each)."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    out = torch.empty(size, size, device=device, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b, out=out)
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(products):
            torch.matmul(a, b, out=out)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    del a, b, out
    return 2 * size**3 * products / best / 1e12


def device_facts(device: torch.device) -> dict:
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        return {
            "device": properties.name,
            "total_memory_bytes": properties.total_memory,
            "capability": f"{properties.major}.{properties.minor}",
            "multiprocessors": properties.multi_processor_count,
            "cuda": torch.version.cuda,
        }
    return {
        "device": f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "total_memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "capability": None,
        "multiprocessors": os.cpu_count(),
        "cuda": None,
    }


def probe(device: torch.device, quick: bool = False) -> dict:
    """Dense bf16 (and, for reference, fp32) matmul TFLOP/s on `device`; `bf16_tflops` is the best size's."""
    sizes = CPU_SIZES if device.type == "cpu" else GPU_SIZES[:2] if quick else GPU_SIZES
    products, repeats = (2, 2) if device.type == "cpu" else (10, 5)
    started = time.perf_counter()
    result = {**device_facts(device), "torch": torch.__version__, "sizes": list(sizes)}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        by_size = {str(size): matmul_tflops(size, dtype, device, products, repeats) for size in sizes}
        result[f"{name}_by_size"] = by_size
        result[f"{name}_tflops"] = max(by_size.values())
    result["seconds"] = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    parser.add_argument("--quick", action="store_true", help="GPU: only the two smaller sizes")
    parser.add_argument("--out", type=Path, help="write the JSON here")
    args = parser.parse_args()
    result = probe(torch.device(args.device), args.quick)
    print(
        f"{result['device']}: dense bf16 {result['bf16_tflops']:.4g} TFLOP/s (best of sizes "
        f"{', '.join(f'{size}: {value:.4g}' for size, value in result['bf16_by_size'].items())}), "
        f"fp32 {result['fp32_tflops']:.4g} TFLOP/s, in {result['seconds']:.1f} s",
        flush=True,
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
