"""Before `make gpu-check` on a lent GPU machine: do the packages the check needs import, at the right versions?

    python3 scripts/check_gpu_env.py        # after installing the carried wheels (.whl/) and setting PYTHONPATH

Prints each package's version and where it comes from (the carried wheels or the machine's image), every
requirement of theirs that what is installed does not satisfy, and whether bitsandbytes finds its CUDA
library and DeepSpeed imports. Exits 1 when the check cannot run at all (torch, transformers, accelerate,
peft, trl or datasets missing or failing to import); a problem with bitsandbytes or DeepSpeed only costs
the steps that use them, so it is reported and the exit status stays 0.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import Version

from pinned_versions import pinned_versions

ESSENTIAL = ("torch", "transformers", "accelerate", "peft", "trl", "datasets")
OPTIONAL = ("bitsandbytes", "deepspeed", "nvidia-ml-py", "matplotlib", "pyarrow", "pytest")
IMPORT_NAMES = {"nvidia-ml-py": "pynvml"}  # distributions whose module has another name


def unmet_requirements(names: list[str]) -> list[str]:
    """Requirements (no extras) of `names` that the installed distributions do not satisfy."""
    environment = {**default_environment(), "extra": ""}
    problems = []
    for name in names:
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in requires:
            try:
                requirement = Requirement(text)
            except InvalidRequirement:
                continue
            if requirement.marker is not None and not requirement.marker.evaluate(environment):
                continue
            try:
                installed = importlib.metadata.version(requirement.name)
            except importlib.metadata.PackageNotFoundError:
                problems.append(f"{name} needs {requirement}: not installed")
                continue
            if requirement.specifier and not requirement.specifier.contains(Version(installed), prereleases=True):
                problems.append(f"{name} needs {requirement}: {installed} installed")
    return problems


def origin(name: str) -> str:
    try:
        files = importlib.metadata.distribution(name).locate_file("")
    except importlib.metadata.PackageNotFoundError:
        return ""
    return str(files)


def main() -> int:
    import torch

    cuda = torch.cuda.is_available()
    print(
        f"python {sys.version.split()[0]} | torch {torch.__version__} (CUDA {torch.version.cuda}) | GPU: "
        f"{torch.cuda.get_device_name() if cuda else 'none visible'}"
    )
    pins = pinned_versions()
    failed_essential, notes = [], []
    print(f"\n{'package':<14} {'installed':<14} {'pinned':<10} from")
    for name in (*ESSENTIAL, *OPTIONAL):
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = "missing"
        pin = pins.get(name, "")
        mark = "" if not pin or pin == version or name == "torch" else "  <- not the pinned version"
        print(f"{name:<14} {version:<14} {pin:<10} {origin(name)}{mark}")
        try:
            importlib.import_module(IMPORT_NAMES.get(name, name))
        except Exception as error:  # noqa: BLE001 - reported, that is the point
            (failed_essential if name in ESSENTIAL else notes).append(
                f"import {name}: {type(error).__name__}: {error}"
            )
    if cuda and "bitsandbytes" not in " ".join(notes):
        try:
            from bitsandbytes.cextension import BNB_BACKEND, lib  # noqa: F401

            print(f"\nbitsandbytes backend {BNB_BACKEND}, native library {getattr(lib, '_name', lib)}")
        except Exception as error:  # noqa: BLE001
            notes.append(f"bitsandbytes native library: {type(error).__name__}: {error}")
    problems = unmet_requirements([*ESSENTIAL, *OPTIONAL, "pydantic", "multiprocess"])
    for line in problems:
        print(f"unmet: {line}")
    for line in notes:
        print(f"problem (only the steps that use it fail): {line}")
    for line in failed_essential:
        print(f"FAILED: {line}")
    if failed_essential:
        print("\nthe check cannot run: carry the missing wheels (python scripts/gather_gpu_wheels.py here).")
        return 1
    print(f"\nready for make gpu-check{'' if not problems and not notes else ' (see the problems above)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
