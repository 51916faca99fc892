"""Shared fixtures: the embedded tiny models and food photos, offline, on CPU; GPU-only tests (`gpu` marker)."""

from __future__ import annotations

import atexit
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS = REPO_ROOT / "tests"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# DeepSpeed's CPU ops built for this venv (`make setup` builds them there), not the ~/.cache folder every
# checkout shares, where another venv's build would be rebuilt for this one in the middle of a test.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
# The environment the warm server starts with: the session's, not what a test has monkeypatched when the first
# run starts it (a run whose environment differs from the server's starts cold).
SESSION_ENV = dict(os.environ)
# Set to 1, every process the tests start starts cold (as `python`), none forked from the warm server.
COLD_SWITCH = "ALT_TEXT_TESTS_COLD"

from alt_text_recipes.train.families import FAMILIES  # noqa: E402  (after the offline settings above)

# Every family's tiny twins, as its module declares them (recipes/alt_text_recipes/train/families/).
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
    from alt_text_recipes.data.sources import load_caption_dataset

    return load_caption_dataset(str(DATASET))


@pytest.fixture(scope="session", params=sorted(TINY_MODELS))
def tiny_model(request):
    """(family, model, processor) for each tiny BLIP-2."""
    from alt_text_recipes.train.modeling import load_trained

    model, processor = load_trained(TINY_MODELS[request.param])
    return request.param, model, processor


def logged_losses(output_dir: Path) -> list[float]:
    """The training losses a run logged (its trainer_state.json), in step order."""
    history = json.loads((Path(output_dir) / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def run_recipe(recipe: str, *args: str, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Launch a recipe as a user would, in its own process (`python recipes/<recipe>.py *args`), and wait for
    it: its exit code, stdout and stderr. Started warm (python_for_runs) where no CUDA GPU is visible."""
    command, env = _recipe_command(recipe, args), {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def start_recipe(recipe: str, *args: str) -> RecipeProcess:
    """Start a recipe in its own process, its output discarded, and return at once."""
    return RecipeProcess(_recipe_command(recipe, args))


def _recipe_command(recipe: str, args: tuple[str, ...]) -> list[str]:
    return [python_for_runs(), str(REPO_ROOT / "recipes" / f"{recipe}.py"), *args]


class RecipeProcess(subprocess.Popen):
    """A started recipe whose kill() is SIGKILL to the recipe's own process. Started warm, that process is not
    the one Popen started (the client, tests/warm_client.py), and would otherwise die a moment after it."""

    def __init__(self, command: list[str]):
        self.pid_file = Path(tempfile.gettempdir()) / f"recipe-{uuid.uuid4().hex}.pid"
        env = {**os.environ, "WARM_PYTHON_PID_FILE": str(self.pid_file)}
        super().__init__(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)

    def kill(self) -> None:
        if self.args[0] != sys.executable:  # started warm
            while not self.pid_file.exists() and self.poll() is None:
                time.sleep(0.01)
            if self.pid_file.exists():
                os.kill(int(self.pid_file.read_text()), signal.SIGKILL)  # the client then ends the same way
                self.pid_file.unlink()
        super().kill()


def python_for_runs() -> str:
    """The `python` the tests start recipes, launchers and runners with: an executable that runs its command
    line in a process forked from a server that imported the stack once (tests/warm_start.py), so a process
    starts in a fraction of a second instead of about 9 s of imports. On a CUDA host, or with
    ALT_TEXT_TESTS_COLD=1, this interpreter."""
    if os.environ.get(COLD_SWITCH) == "1" or _cuda_available():
        return sys.executable
    return warm_python()


def warm_python() -> str:
    """The warm `python` itself, whatever the machine and the cold switch (tests/test_warm_start.py tests it)."""
    with _WARM_SERVER_LOCK:  # tests start runs from threads: one server for all
        return _start_warm_server()


def python_for_ranks() -> str:
    """The `python` of the multi-process tests (launchers and their ranks): this interpreter, always. Warm
    ranks would share the server's hash seed (tests/warm_start.py), so a job whose ranks disagree on the order
    of a set of strings would pass warm and fail for a user."""
    return sys.executable


_WARM_SERVER_LOCK = threading.Lock()


@functools.cache
def _start_warm_server() -> str:
    folder = Path(tempfile.mkdtemp(prefix="warm-python-"))
    server_socket = folder / "server.sock"
    server = subprocess.Popen(
        [sys.executable, str(TESTS / "warm_start.py"), str(server_socket)],
        stdin=subprocess.DEVNULL,
        env={**SESSION_ENV, "CUDA_VISIBLE_DEVICES": ""},
        start_new_session=True,
    )
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    atexit.register(server.kill)  # runs first
    os.environ["WARM_PYTHON_LOG"] = str(folder / "runs.log")  # read back by pytest_terminal_summary
    while not server_socket.exists():  # it listens before it imports: clients wait for its imports
        if server.poll() is not None:
            raise RuntimeError(f"the warm server ended at start (exit code {server.returncode})")
        time.sleep(0.01)
    client = folder / "python"  # -S: the client needs only the standard library, and starts in milliseconds
    client.write_text(
        f"#!{sys.executable} -S\nimport sys\nsys.path.insert(0, {str(TESTS)!r})\n"
        f"import warm_client\nwarm_client.main({str(server_socket)!r})\n"
    )
    client.chmod(0o755)
    return str(client)


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
    return [python_for_ranks(), "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_port", str(free_port()), script, *args]  # fmt: skip


# Multi-process tests run on CPU processes (gloo) even on a machine with GPUs.
CPU_ONLY_ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}


def accelerate_launch(
    config: str, script: str, *args: str, processes: int = 2, launcher_flags: tuple = ()
) -> list[str]:
    """The `accelerate launch` command a user types for `script` under accelerate_configs/`config`, on
    `processes` CPU processes (`--use_cpu true`) and a free port unless `launcher_flags` name one; started cold
    (python_for_ranks), so the ranks are the launcher's own descendants."""
    port = [] if "--main_process_port" in launcher_flags else ["--main_process_port", str(free_port())]
    return [
        python_for_ranks(), "-m", "accelerate.commands.launch", "--config_file",
        f"accelerate_configs/{config}",
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


def pytest_terminal_summary(terminalreporter):
    """How many of the runs started through the warm `python` started warm, and why the others started cold: a
    variable a test or a library sets in this process for every later run would make them all cold, slowly."""
    log = os.environ.get("WARM_PYTHON_LOG")
    if not log or not Path(log).exists():
        return
    lines = Path(log).read_text().splitlines()
    cold = [line.removeprefix("cold ") for line in lines if line.startswith("cold")]
    reasons = sorted({reason for line in cold for reason in line.split()})
    terminalreporter.write_line(
        f"warm python: {len(lines) - len(cold)} runs started warm, {len(cold)} cold"
        + (f" (differing: {' '.join(reasons[:12])})" if reasons else "")
    )
