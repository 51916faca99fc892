"""The `python` of the tests' warm runs (tests/warm_start.py): a client that asks the warm server to run its
command line and then stands in for that run: the same stdin, stdout and stderr (passed to the server), the
same exit code, and the signals it receives passed on. Only the standard library: it starts in milliseconds.

A command line this does not understand (an interpreter option other than -u, -c and -m) runs cold, as
`python` itself would run it; so does a run whose environment differs from the server's in a variable that may be
read at import (`import_time_differences`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time

PID_FILE = "WARM_PYTHON_PID_FILE"  # where to write the run's process id, when set
LOG_FILE = "WARM_PYTHON_LOG"  # where to note whether each run started warm or cold, when set
SERVER_ENV_SUFFIX = ".env"  # the server's environment beside its socket (warm_start.SERVER_ENV_SUFFIX)
# The variables the server's imports (the interpreter, torch, transformers, huggingface_hub, datasets,
# accelerate, peft, tokenizers, numpy and the BLAS and GNU OpenMP runtimes) may have read, by prefix: a run that
# sets one of them differently from the server starts cold. Other variables (a test's own, wandb's: wandb is
# imported by the run itself) reach the run's os.environ before anything of its own reads them; so do Intel
# OpenMP's KMP_* (torch's Linux wheels use GNU OpenMP; scikit-learn and joblib set KMP_* in the tests' process).
READ_AT_IMPORT = (
    "PYTHON", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TORCH", "PYTORCH_", "DATASETS_", "ACCELERATE_", "PEFT_",
    "TRL_", "TOKENIZERS_", "SAFETENSORS_", "BNB_", "BITSANDBYTES_", "DS_", "DEEPSPEED_", "TRITON_", "OMP_", "MKL_",
    "OPENBLAS_", "GOTO", "NUMPY_", "NPY_", "USE_", "LD_", "XDG_", "HOME", "TMP", "TEMP", "LANG", "LC_", "TZ",
)  # fmt: skip
# Of those, what the server applies to a run (PYTHONUNBUFFERED, OMP_NUM_THREADS), and a default torch writes into
# the tests' own process and reads later: its compiler's cache folder (read when it compiles). The tests' session
# summary counts the runs that started cold, and why.
APPLIED_OR_READ_AT_USE = {"PYTHONUNBUFFERED", "OMP_NUM_THREADS", "TORCHINDUCTOR_CACHE_DIR"}
# And what changes nothing where a warm run starts: the CUDA settings, since warm runs are for machines without a
# CUDA GPU (deepspeed's import sets PYTORCH_NVML_BASED_CUDA_CHECK in the tests' own process).
CUDA_ONLY = ("CUDA", "PYTORCH_NVML_", "PYTORCH_CUDA_", "NCCL_", "NVIDIA_")
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def parse(argv: list[str]) -> dict | None:
    """What `python *argv` runs: {"mode": "script"/"module"/"code", "target", "args", "unbuffered"}; None for a
    command line only the real interpreter handles."""
    unbuffered = False
    for index, option in enumerate(argv):
        if option == "-u":
            unbuffered = True
        elif option in ("-m", "-c") and index + 1 < len(argv):
            mode = "module" if option == "-m" else "code"
            return {"mode": mode, "target": argv[index + 1], "args": argv[index + 2 :], "unbuffered": unbuffered}
        elif option.startswith("-"):
            return None
        else:
            return {"mode": "script", "target": option, "args": argv[index + 1 :], "unbuffered": unbuffered}
    return None  # an interactive interpreter


def import_time_differences(run_env: dict[str, str], server_env: dict[str, str]) -> list[str]:
    """The variables, set, changed or unset, in which the run's environment differs from the server's and that
    the server's imports may have read: the run must start cold to see them."""
    names = (run_env.keys() | server_env.keys()) - APPLIED_OR_READ_AT_USE
    read_at_import = (name for name in names if name.startswith(READ_AT_IMPORT) and not name.startswith(CUDA_ONLY))
    return sorted(name for name in read_at_import if run_env.get(name) != server_env.get(name))


def _server_env(server: str) -> dict[str, str] | None:
    """The server's environment, written once its imports are done (it listens before: wait for them)."""
    path, deadline = server + SERVER_ENV_SUFFIX, time.monotonic() + 300
    while not os.path.exists(path):
        if not os.path.exists(server) or time.monotonic() > deadline:  # gone, or stuck in its imports
            return None
        time.sleep(0.01)
    with open(path) as file:
        return json.load(file)


def main(server: str) -> None:
    """Run `python *sys.argv[1:]` through the warm server listening on the Unix socket `server`."""
    server_env = _server_env(server)
    run = parse(sys.argv[1:]) if server_env is not None else None
    env = {name: value for name, value in os.environ.items() if name != PID_FILE}  # not for the run's own children
    differences = import_time_differences(env, server_env) if run is not None else ["interpreter-options"]
    _log(differences)
    if differences:
        _tell_the_run_pid(os.getpid())  # exec keeps it: the pid is the run's
        os.execve(sys.executable, [sys.executable, *sys.argv[1:]], env)
    run.update(executable=os.path.abspath(sys.argv[0]), cwd=os.getcwd(), env=env)
    request = json.dumps(run).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.connect(server)
        socket.send_fds(connection, [len(request).to_bytes(8, "big")], [0, 1, 2])
        connection.sendall(request)
        replies = connection.makefile("r")
        pid = int(replies.readline())
        _tell_the_run_pid(pid)
        for number in FORWARDED_SIGNALS:
            signal.signal(number, lambda received, _: os.kill(pid, received))
        line = replies.readline()
    code = int(line) if line else 1
    if code < 0:  # ended by a signal: end the same way
        if -code not in (signal.SIGKILL, signal.SIGSTOP):  # the two whose handling cannot be set
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


def _tell_the_run_pid(pid: int) -> None:
    """For a test that signals the run itself (conftest.start_recipe), when it asks."""
    if os.environ.get(PID_FILE):
        with open(os.environ[PID_FILE] + ".part", "w") as file:
            file.write(str(pid))
        os.replace(os.environ[PID_FILE] + ".part", os.environ[PID_FILE])


def _log(differences: list[str]) -> None:
    """One line per run in the log conftest keeps (its session summary counts them): warm, or cold and why."""
    if os.environ.get(LOG_FILE):
        with open(os.environ[LOG_FILE], "a") as file:  # one short write: lines from parallel runs stay whole
            file.write(("cold " + " ".join(differences) if differences else "warm") + "\n")
