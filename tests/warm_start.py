"""Recipe runs for the tests, each in its own process, started warm.

A recipe process spends about 9 s of CPU importing torch, transformers, peft, accelerate and datasets before it
does anything; the suite starts dozens of them, and on 2 cores that import is most of its time. So the tests
start one fork server (multiprocessing's "forkserver") that imports the stack once (PRELOAD), and each run is a
child forked from it: its own process, running the recipe file as `__main__` with the user's arguments,
environment and working directory, its stdout and stderr in files, its exit code that of
`python recipes/<recipe>.py ...`. Only the import is shared. On a machine with a CUDA GPU the tests start
recipes cold instead (tests/conftest.py): a fork server that ever touched CUDA cannot fork usable children.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import runpy
import sys

# The stack every recipe imports: what the fork server imports once (installed packages: the fork server does
# not get the tests' sys.path, so this module itself is imported by each child, and is light).
PRELOAD = ["torch", "accelerate", "datasets", "transformers", "peft", "alt_text_recipes.train"]


def run_script(script: str, args: list[str], env: dict[str, str], cwd: str, stdout: str, stderr: str) -> None:
    """In the forked child: become `python script *args` run in `cwd` with `env`, printing to the two files."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    if env.get("OMP_NUM_THREADS"):  # read by torch when it starts its threads: here, already imported
        import torch

        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    for fd, path in ((1, stdout), (2, stderr)):
        file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(file, fd)  # every handle on fd 1 and 2 (print, logging, tqdm, C code) now writes to the file
        os.close(file)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    # A child of the fork server inherits its start method; a fresh interpreter has the platform's default
    # (DataLoader workers would otherwise each start a cold fork server of their own).
    multiprocessing.set_start_method(None, force=True)
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(script))  # as `python script` puts the script's folder first
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        # multiprocessing ends its children with os._exit: run what an interpreter's exit would run.
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
