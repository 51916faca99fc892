"""What prepares the lent GPU machine, checked here: the versions the wheels are gathered at (pyproject.toml's
pins, which CI installs), the slimmed bitsandbytes wheel, and the environment check that runs there first.

Downloading the wheels needs the package index and about 25 s (`make gpu-wheels`); the parts that decide what
is downloaded and what travels are tested without it."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import check_gpu_env
import gather_gpu_wheels
from conftest import REPO_ROOT
from pinned_versions import pinned_versions


def test_the_wheels_are_gathered_at_the_versions_ci_installs():
    wanted = gather_gpu_wheels.pins()
    assert set(gather_gpu_wheels.PINNED) | set(gather_gpu_wheels.NEEDED) == set(wanted)
    # CI installs pyproject.toml's pins, so each one read must be what this environment holds.
    for name in gather_gpu_wheels.PINNED:
        assert wanted[name] == importlib.metadata.version(name), name


def test_pins_are_read_from_dependencies_and_extras_and_nothing_else(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        "[project]\n"
        'dependencies = ["torch>=2.4", "Transformers==5.23.0", "peft == 0.21.2", '
        '"bitsandbytes==0.50.2; sys_platform == \'linux\'", "pillow"]\n'
        '[project.optional-dependencies]\ndev = ["ruff==0.17.6", "pytest"]\n'
    )
    assert pinned_versions(pyproject) == {
        "transformers": "5.23.0",
        "peft": "0.21.2",
        "bitsandbytes": "0.50.2",
        "ruff": "0.17.6",
    }


def test_a_package_no_longer_pinned_stops_the_gathering_with_its_name(monkeypatch):
    monkeypatch.setattr(gather_gpu_wheels, "pinned_versions", lambda: {"transformers": "5.23.0"})
    with pytest.raises(SystemExit, match="pins none of: trl, datasets, peft, bitsandbytes, deepspeed, nvidia-ml-py"):
        gather_gpu_wheels.pins()


def _fake_wheel(folder: Path, libraries: list[str]) -> Path:
    wheel = folder / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("bitsandbytes/__init__.py", "VERSION = 1\n")
        for library in libraries:
            archive.writestr(f"bitsandbytes/{library}", library.encode() * 100)
        archive.writestr("bitsandbytes-0.50.2.dist-info/METADATA", "Name: bitsandbytes\n")
        archive.writestr("bitsandbytes-0.50.2.dist-info/RECORD", "stale\n")
    return wheel


def test_bitsandbytes_keeps_its_cpu_and_cuda_13_libraries_with_a_true_record(tmp_path):
    libraries = [
        "libbitsandbytes_cpu.so",
        "libbitsandbytes_cuda118.so",
        "libbitsandbytes_cuda124.so",
        "libbitsandbytes_cuda130.so",
        "libbitsandbytes_cuda131.so",
        "libbitsandbytes_rocm63.so",
    ]
    (tmp_path / "out").mkdir()
    slim = gather_gpu_wheels.slim_bitsandbytes(_fake_wheel(tmp_path, libraries), tmp_path / "out", cuda_major=13)
    with zipfile.ZipFile(slim) as archive:
        names = archive.namelist()
        kept = sorted(name.rsplit("/", 1)[-1] for name in names if name.endswith(".so"))
        assert kept == ["libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so", "libbitsandbytes_cuda131.so"]
        assert {"bitsandbytes/__init__.py", "bitsandbytes-0.50.2.dist-info/METADATA"} <= set(names)
        record = archive.read("bitsandbytes-0.50.2.dist-info/RECORD").decode().splitlines()
        # pip checks each installed file against RECORD: every file listed once, with its own hash and size.
        listed = {line.split(",")[0]: line.split(",")[1:] for line in record}
        assert set(listed) == set(names)
        for name in names:
            if name.endswith("RECORD"):
                assert listed[name] == ["", ""]
                continue
            data = archive.read(name)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert listed[name] == [f"sha256={digest}", str(len(data))]


def test_the_environment_check_reads_the_pins_and_passes_here():
    finished = subprocess.run(  # cold: a warm run would find its imports done by the warm server
        [sys.executable, "scripts/check_gpu_env.py"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    rows = {line.split()[0]: line.split()[1:3] for line in finished.stdout.splitlines() if line[:1].isalpha()}
    pins = pinned_versions()
    for name in ("transformers", "peft", "trl", "datasets", "bitsandbytes", "deepspeed", "nvidia-ml-py"):
        assert rows[name] == [pins[name], pins[name]], (name, rows.get(name))
    assert "not the pinned version" not in finished.stdout
    assert "ready for make gpu-check" in finished.stdout
    assert set(check_gpu_env.ESSENTIAL) <= set(rows)
