"""Shared fixtures: the embedded tiny models and food photos, offline, on CPU; GPU-only tests (`gpu` marker)."""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# DeepSpeed's CPU ops built for this venv (`make setup` builds them there), not the ~/.cache folder every
# checkout shares, where another venv's build would be rebuilt for this one in the middle of a test.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))

from alt_text_recipes.families import FAMILIES  # noqa: E402  (after the offline settings above)

# Every family's tiny twins, as its module declares them (recipes/alt_text_recipes/families/).
ALL_TWINS = {twin.name: REPO_ROOT / twin.folder for family in FAMILIES.values() for twin in family.twins}
TINY_MODELS = {twin.builds: REPO_ROOT / twin.folder for twin in FAMILIES["blip2"].twins}  # "opt", "t5"
CHAT_TWINS = {
    twin.name: REPO_ROOT / twin.folder
    for family in FAMILIES.values()
    if family.uses_chat_template
    for twin in family.twins
}
DATASET = REPO_ROOT / "data/gourmetgram-mini"


@pytest.fixture(scope="session")
def food_splits():
    from alt_text_recipes.data import load_caption_dataset

    return load_caption_dataset(str(DATASET))


@pytest.fixture(scope="session", params=sorted(TINY_MODELS))
def tiny_model(request):
    """(family, model, processor) for each tiny BLIP-2."""
    from alt_text_recipes.modeling import load_trained

    model, processor = load_trained(TINY_MODELS[request.param])
    return request.param, model, processor


def logged_losses(output_dir: Path) -> list[float]:
    """The training losses a run logged (its trainer_state.json), in step order."""
    history = json.loads((Path(output_dir) / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def run_recipe(recipe: str, *args: str, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Launch a recipe as a user would, in its own process (`python recipes/<recipe>.py *args`), and wait for
    it: its exit code, stdout and stderr. Started warm (tests/warm_start.py) where no CUDA GPU is visible."""
    command = _recipe_command(recipe, args)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    if _cuda_available():
        return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    with tempfile.TemporaryDirectory() as folder:
        stdout, stderr = Path(folder) / "stdout", Path(folder) / "stderr"
        process = WarmProcess(command, env, stdout, stderr)
        try:
            returncode = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise subprocess.TimeoutExpired(command, timeout, _printed(stdout), _printed(stderr)) from None
        return subprocess.CompletedProcess(command, returncode, _printed(stdout), _printed(stderr))


def start_recipe(recipe: str, *args: str) -> subprocess.Popen | WarmProcess:
    """Start a recipe in its own process, its output discarded, and return at once: poll(), kill(), wait()."""
    command = _recipe_command(recipe, args)
    if _cuda_available():
        return subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return WarmProcess(command, dict(os.environ), Path(os.devnull), Path(os.devnull))


def _recipe_command(recipe: str, args: tuple[str, ...]) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "recipes" / f"{recipe}.py"), *args]


class WarmProcess:
    """`command` (python, a script, its arguments) as a child of the warm fork server, printing to two files:
    the part of subprocess.Popen the tests use (an exit code is minus the signal that ended the process)."""

    def __init__(self, command: list[str], env: dict, stdout: Path, stderr: Path):
        import warm_start

        self.args = command
        self.process = _warm_context().Process(
            target=warm_start.run_script, args=(command[1], command[2:], env, str(REPO_ROOT), str(stdout), str(stderr))
        )
        self.process.start()

    def poll(self) -> int | None:
        return self.process.exitcode

    def kill(self) -> None:
        self.process.kill()

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.process.exitcode


def _printed(path: Path) -> str:
    """What a warm run printed to one stream (nothing if it ended before it could open its file)."""
    return path.read_text() if path.exists() else ""


@functools.cache
def _warm_context() -> multiprocessing.context.BaseContext:
    """The fork server the warm runs start from; it imports the stack (warm_start.PRELOAD) once."""
    import warm_start

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(warm_start.PRELOAD)
    return context


def run_recipes(runs: dict, jobs: int = 2) -> dict:
    """Launch independent recipe runs, {key: (recipe, args)}, `jobs` at a time, each its own process as a user
    launches it, with one thread of its own (a serial suite leaves the second core idle while it waits for a
    run; two runs of two threads each on two cores would only contend). Returns {key: CompletedProcess, or the
    exception that ended the run (a timeout): its test raises it}."""

    def launch(recipe: str, args: list[str]) -> subprocess.CompletedProcess | Exception:
        try:
            return run_recipe(recipe, *args, timeout=600, env={"OMP_NUM_THREADS": "1"})
        except subprocess.TimeoutExpired as error:
            return error

    with ThreadPoolExecutor(max_workers=jobs) as pool:  # threads only wait on the processes
        launched = {key: pool.submit(launch, recipe, args) for key, (recipe, args) in runs.items()}
    return {key: future.result() for key, future in launched.items()}


def finished(run: subprocess.CompletedProcess | Exception) -> subprocess.CompletedProcess:
    """A run from `run_recipes`, or what ended it, raised in the test that asked for it."""
    if isinstance(run, Exception):
        raise run
    return run


def selected_params(request, test_name: str) -> list[dict]:
    """The parameters of the selected cases of `test_name` in this session (-k, node ids): a module fixture
    that runs every case's expensive part up front runs only those."""
    return [
        item.callspec.params
        for item in request.session.items
        if getattr(item, "originalname", None) == test_name and hasattr(item, "callspec")
    ]


def free_port() -> int:
    """A port no one listens on: each multi-process test its own (tests may run side by side, pytest -n)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(script: str, *args: str, processes: int = 2) -> list[str]:
    """The command that runs a test worker script on `processes` CPU processes (gloo), on a free port."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_port", str(free_port()), script, *args]  # fmt: skip


# Multi-process tests run on CPU processes (gloo) even on a machine with GPUs.
CPU_ONLY_ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}


def accelerate_launch(
    config: str, script: str, *args: str, processes: int = 2, launcher_flags: tuple = ()
) -> list[str]:
    """The `accelerate launch` command a user types for `script` under accelerate_configs/`config`, on
    `processes` CPU processes (`--use_cpu true`) and a free port unless `launcher_flags` name one."""
    port = [] if "--main_process_port" in launcher_flags else ["--main_process_port", str(free_port())]
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", f"accelerate_configs/{config}",
        "--num_processes", str(processes), *port, *launcher_flags, script, *args, "--use_cpu", "true",
    ]  # fmt: skip


@functools.cache
def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need a CUDA GPU. With one they run like any other test (`make test` runs them,
    `make test-gpu` / `pytest -m gpu` only them). Without one they are deselected, and counted as deselected
    in the summary line; asking for them with `-m gpu` on such a machine is an error that says why."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items or _cuda_available():
        return
    markexpr = config.option.markexpr or ""
    if re.search(r"\bgpu\b", markexpr) and not re.search(r"\bnot\s+gpu\b", markexpr):
        raise pytest.UsageError(
            f"-m '{markexpr}' asks for the GPU tests, and this machine has no CUDA GPU "
            "(torch.cuda.is_available() is False): run them on a GPU host; here, `make test`."
        )
    config.hook.pytest_deselected(items=gpu_items)
    items[:] = [item for item in items if not item.get_closest_marker("gpu")]
