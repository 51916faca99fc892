"""Python processes for the tests, started warm.

A recipe process spends about 9 s of CPU importing torch, transformers, peft, accelerate and datasets before it
does anything; the suite starts about a hundred of them (recipes, launchers, the ranks they start, the runs of
the product's own runners), and on 2 cores that import is most of its time. So the tests start one server
(`python tests/warm_start.py SOCKET`) that imports the stack once (PRELOAD) and then forks a process for each
command line it is sent. The command line comes from tests/warm_client.py, an executable the tests use in
place of `python` (conftest.python_for_runs), which stands in for the run: its stdin, stdout and stderr, its
exit code, the signals it gets. Each run is its own process, running its script, module or code as `__main__`
with its own arguments, environment and working directory; only the import is shared. Inside a run
`sys.executable` is that client, so what the run starts in turn (the ranks of `accelerate launch` or
torchrun, the steps of a runner) starts warm too.

When the client dies (SIGKILL), its run is killed with everything in its process group. On a machine with a
CUDA GPU the tests start processes cold instead: a process that initialised CUDA cannot fork usable children.

A run ends as `python` ends: its non-daemon threads are joined, then its atexit functions run. What a fork
cannot give a run, and so where the tests start cold (conftest.python_for_ranks, a test's own
sys.executable, or every process with ALT_TEXT_TESTS_COLD=1):
- its own hash seed: every warm run shares the server's (str hashes are keyed once per interpreter), so the
  ranks of one job would iterate sets of strings in one order where cold ranks may not: the multi-process
  tests start cold;
- fresh imports: a module imported by the server is not imported again, so a check of what imports (the GPU
  machine's environment check) would see the server's modules: those tests start cold;
- its own peak resident memory: a forked child's counts the server's pages it shares;
- an environment read at import: a run whose environment differs from the server's in a variable that the
  server's imports may have read (warm_client.READ_AT_IMPORT: PYTHONPATH, PYTHONHASHSEED or HF_ENDPOINT, say)
  runs cold, as the client finds by comparing it with the server's (written beside its socket).
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import runpy
import select
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from typing import NoReturn

# The stack every recipe imports: what the server imports once.
PRELOAD = ["torch", "accelerate", "datasets", "transformers", "peft", "alt_text_recipes.train.loop"]
# The server's environment, as JSON in `<socket>.env`: a client whose environment differs runs cold.
SERVER_ENV_SUFFIX = ".env"


def serve(socket_path: str) -> None:
    """Listen first (clients may connect while the stack imports), then fork a run per connection."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(64)
    for module in PRELOAD:
        importlib.import_module(module)
    # After the imports, which set some variables of their own (TORCHINDUCTOR_CACHE_DIR): what every run starts
    # with. A client waits for this file (it would run cold without it).
    with open(socket_path + SERVER_ENV_SUFFIX + ".part", "w") as file:
        json.dump(dict(os.environ), file)
    os.replace(socket_path + SERVER_ENV_SUFFIX + ".part", socket_path + SERVER_ENV_SUFFIX)
    while True:
        connection, _ = listener.accept()
        if os.fork() == 0:
            listener.close()
            _child_ends_after(_supervise, connection)
        connection.close()
        _reap_finished_supervisors()


def _child_ends_after(work: Callable[..., object], *args) -> NoReturn:
    """A forked child does `work(*args)` and ends there: whatever happens, it never returns into its parent's
    loop."""
    try:
        work(*args)
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def _reap_finished_supervisors() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def _supervise(connection: socket.socket) -> None:
    """In the server's child: start the run, tell the client its pid and later its exit code; kill the run's
    process group if the client dies first."""
    header, fds, _, _ = socket.recv_fds(connection, 8, 3)
    size = int.from_bytes(header, "big")
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the client left before it sent its command line")
        data += chunk
    request = json.loads(data)
    pid = os.fork()
    if pid == 0:
        connection.close()
        _child_ends_after(_become_the_run, request, fds)
    try:  # as the run does itself: whichever comes first, the group exists before it can be killed
        os.setpgid(pid, pid)
    except (ProcessLookupError, PermissionError):  # the run has ended already
        pass
    for fd in fds:
        os.close(fd)
    connection.sendall(f"{pid}\n".encode())
    process = os.pidfd_open(pid)
    while True:
        ready, _, _ = select.select([connection, process], [], [])
        if process in ready:
            break
        if not connection.recv(1):  # the client is gone: so is its run
            _kill_group(pid)
            break
    _, status = os.waitpid(pid, 0)
    try:
        connection.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
    except OSError:
        pass
    os._exit(0)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _become_the_run(request: dict, fds: list[int]) -> None:
    """In the run's process: become `python [-u] script|-m module|-c code *args` as the client was asked."""
    os.setpgid(0, 0)  # its own group, which dies with the client
    for target, fd in enumerate(fds):
        os.dup2(fd, target)  # every handle on fd 0-2 (print, logging, tqdm, C code) is now the client's
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    if request["env"].get("OMP_NUM_THREADS"):  # read by torch when it starts its threads: here, already imported
        import torch

        torch.set_num_threads(int(request["env"]["OMP_NUM_THREADS"]))
    unbuffered = request["unbuffered"] or bool(request["env"].get("PYTHONUNBUFFERED"))
    sys.stdout.reconfigure(line_buffering=True, write_through=unbuffered)
    sys.stderr.reconfigure(line_buffering=True)
    sys.executable = request["executable"]  # what this run starts with sys.executable starts warm as well
    os._exit(_run_as_main(request["mode"], request["target"], request["args"]))


def _run_as_main(mode: str, target: str, args: list[str]) -> int:
    """Run the script, module or code as `python` would, and return the exit code it would have."""
    try:
        try:
            if mode == "script":
                sys.argv = [target, *args]
                sys.path[0] = os.path.dirname(os.path.abspath(target))
                runpy.run_path(os.path.abspath(target), run_name="__main__")  # __file__ absolute, as python sets it
            elif mode == "module":
                sys.argv = [target, *args]  # runpy puts the module's file in argv[0]
                sys.path[0] = os.getcwd()
                runpy.run_module(target, run_name="__main__", alter_sys=True)
            else:
                sys.argv = ["-c", *args]
                sys.path[0] = ""
                exec(compile(target, "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
            code = 0
        except SystemExit as end:
            code = _exit_code(end.code)
        except BaseException:
            traceback.print_exc()
            code = 1
    finally:  # what an interpreter's exit does, in its order, and os._exit would skip
        threading._shutdown()  # joins the non-daemon threads
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
    return code


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    serve(sys.argv[1])
