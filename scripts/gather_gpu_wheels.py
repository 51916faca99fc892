"""Gather here, from the package index, the wheels the lent GPU machine needs to run `make gpu-check`.

    python scripts/gather_gpu_wheels.py            # -> .whl/, about 27 MiB: carried in the call that runs the check

The GPU machine (Python 3.12, torch 2.11 + CUDA 13.0, transformers 5.17, accelerate 1.15) reaches no package
index and lacks datasets, trl, bitsandbytes and deepspeed; what travels to it is capped at 64 MiB per call,
the working tree included. This writes to .whl/ every wheel the check needs there, at the versions
pyproject.toml pins (and CI installs): transformers, trl, datasets, peft, deepspeed, bitsandbytes, nvidia-ml-py
(the memory report's GPU utilisation and power), and the packages they need that the machine's image lacks or
holds at a version that may not satisfy them.

bitsandbytes is slimmed to its CPU and CUDA 13.x libraries (the machine's torch is built for CUDA 13.0, and
bitsandbytes loads the library of torch's CUDA version): the PyPI wheel holds every CUDA and ROCm build, 41 MiB,
which with the 23 MiB working tree is over what one call carries, and it cannot travel alone either (the
working tree goes with every call). The slim copy keeps every other file and gets a rewritten RECORD.

DeepSpeed publishes only a source archive: it is built here into a py3-none-any wheel with DS_BUILD_OPS=0
(its C++ ops are compiled on the GPU machine when first used), then installed into a scratch folder and
imported to check it. On the machine:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
    python3 scripts/check_gpu_env.py          # versions and imports; exit 1 if the check cannot run

.whl/ is git-ignored; nothing here is committed.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from pinned_versions import pinned_versions

REPO_ROOT = Path(__file__).resolve().parents[1]
CALL_LIMIT = 64 * 2**20
# Pinned in pyproject.toml, missing on the GPU machine or there at another version.
PINNED = ("transformers", "trl", "datasets", "peft", "bitsandbytes", "deepspeed", "nvidia-ml-py")
# What those need that the machine's image lacks (datasets: dill, multiprocess; deepspeed: hjson, pydantic and
# its parts), or holds at a version that may not satisfy them (datasets wants fsspec <= 2026.9.0, pydantic
# typing-extensions >= 4.16): carried at the versions installed here, which CI tests.
NEEDED = (
    "dill",
    "multiprocess",
    "hjson",
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    "fsspec",
    "typing-extensions",
)
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)


def pins() -> dict[str, str]:
    """name -> version: pyproject.toml's pins of PINNED, then the installed versions of what they need."""
    pinned = pinned_versions()
    missing = [name for name in PINNED if name not in pinned]
    if missing:
        sys.exit(f"pyproject.toml pins none of: {', '.join(missing)} (a `name==version` dependency each)")
    found = {name: pinned[name] for name in PINNED}
    for name in NEEDED:
        found[name] = importlib.metadata.version(name)
    return found


def pip(*args: str, env: dict | None = None) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, env={**os.environ, **(env or {})})


def download(name: str, version: str, dest: Path) -> Path:
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    pip(
        "download",
        "-q",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        "3.12",
        "--implementation",
        "cp",
        *platforms,
        "-d",
        str(dest),
        f"{name}=={version}",
    )
    return wheel_of(name, dest)


def wheel_of(name: str, folder: Path) -> Path:
    stem = re.sub(r"[-_.]+", "_", name).lower()
    wheels = [w for w in folder.glob("*.whl") if re.sub(r"[-_.]+", "_", w.name.split("-")[0]).lower() == stem]
    if len(wheels) != 1:
        sys.exit(f"expected one {name} wheel in {folder}, found {[w.name for w in wheels]}")
    return wheels[0]


def build_deepspeed(version: str, dest: Path) -> Path:
    """PyPI has only DeepSpeed's source: build a pure wheel with no ops compiled in, check it imports."""
    pip(
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(dest),
        f"deepspeed=={version}",
        env={"DS_BUILD_OPS": "0"},
    )
    wheel = wheel_of("deepspeed", dest)
    if not wheel.name.endswith("-py3-none-any.whl"):
        sys.exit(f"the DeepSpeed wheel is not pure Python: {wheel.name}")
    with tempfile.TemporaryDirectory() as target:
        pip("install", "-q", "--no-index", "--no-deps", "--no-compile", "--target", target, str(wheel))
        probe = subprocess.run(
            [sys.executable, "-c", "import deepspeed; print(deepspeed.__version__)"],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": target, "DS_BUILD_OPS": "0"},
        )
        if probe.returncode != 0 or probe.stdout.strip().splitlines()[-1:] != [version]:
            sys.exit(f"the DeepSpeed wheel does not import: {probe.stderr[-2000:]}")
    print(f"deepspeed {version}: built {wheel.name}, installs and imports (DS_BUILD_OPS=0)")
    return wheel


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def slim_bitsandbytes(wheel: Path, dest: Path, cuda_major: int) -> Path:
    """A copy of the bitsandbytes wheel with only its CPU and CUDA `cuda_major`.x libraries (RECORD rewritten)."""
    kept_libraries = re.compile(rf"libbitsandbytes_(cpu|cuda{cuda_major}\d+)\.so$")
    out = dest / wheel.name
    dropped = []
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        record_name = next(name for name in source.namelist() if name.endswith(".dist-info/RECORD"))
        records = []
        for info in source.infolist():
            name = info.filename
            if name == record_name:
                continue
            if re.search(r"libbitsandbytes_[^/]*\.so$", name) and not kept_libraries.search(name):
                dropped.append(name.rsplit("/", 1)[-1])
                continue
            data = source.read(info)
            target.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
            records.append(_record_line(name, data))
        records.append(f"{record_name},,")
        target.writestr(record_name, "\n".join(records) + "\n")
    kept = [n.rsplit("/", 1)[-1] for n in zipfile.ZipFile(out).namelist() if n.endswith(".so")]
    print(
        f"bitsandbytes: kept {', '.join(sorted(kept))}; dropped {len(dropped)} other builds "
        f"({wheel.stat().st_size / 2**20:.1f} MiB -> {out.stat().st_size / 2**20:.1f} MiB)"
    )
    return out


def working_tree_bytes() -> int:
    """What travels besides carried folders: tracked and untracked files git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    return sum(
        (REPO_ROOT / name.decode()).stat().st_size for name in listed if name and (REPO_ROOT / name.decode()).is_file()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=REPO_ROOT / ".whl", help="where the wheels go")
    parser.add_argument("--cuda_major", type=int, default=13, help="the CUDA major version of the machine's torch")
    args = parser.parse_args()
    wanted = pins()
    args.dest.mkdir(parents=True, exist_ok=True)
    for stale in args.dest.glob("*.whl"):  # one version of each: two stop the whole install there
        stale.unlink()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for name, version in wanted.items():
            if name == "deepspeed":
                shutil.move(build_deepspeed(version, scratch), args.dest)
            elif name == "bitsandbytes":
                slim_bitsandbytes(download(name, version, scratch), args.dest, args.cuda_major)
            else:
                shutil.move(download(name, version, scratch), args.dest)
    print(f"\n{'wheel':<70} {'MiB':>7}")
    total = 0
    for wheel in sorted(args.dest.glob("*.whl")):
        total += wheel.stat().st_size
        print(f"{wheel.name:<70} {wheel.stat().st_size / 2**20:7.2f}")
    tree = working_tree_bytes()
    print(
        f"{args.dest.name}/ total {total / 2**20:.1f} MiB; working tree {tree / 2**20:.1f} MiB; the call carries "
        f"{(total + tree) / 2**20:.1f} MiB of {CALL_LIMIT / 2**20:.0f} MiB"
    )
    if total + tree > CALL_LIMIT:
        sys.exit("over the 64 MiB a call carries: see docs/gpu-validation.md (split the wheels over two calls).")


if __name__ == "__main__":
    main()
