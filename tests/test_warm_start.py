"""The tests' warm `python` (conftest.warm_python) behaves as `python` does for what the tests read: exit codes,
output, arguments, working directory, environment, signals, and how a run ends. Were it to lose an exit code,
every test that checks a run's exit code would pass whatever the run did. These tests use it on any machine and
with ALT_TEXT_TESTS_COLD=1 too: they test it (conftest.python_for_runs gives it only where no CUDA GPU is visible
and the switch is off)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import REPO_ROOT, SESSION_ENV, warm_python

REPORT = "import os, sys; print(sys.argv, os.getcwd(), os.environ.get('MARK')); print('to stderr', file=sys.stderr)"


def python(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([warm_python(), *args], capture_output=True, text=True, timeout=120, **kwargs)


@pytest.mark.parametrize(
    ("code", "returncode", "stderr"),
    [
        ("pass", 0, ""),
        ("import sys; sys.exit(3)", 3, ""),
        ("import sys; sys.exit('bad input')", 1, "bad input"),
        ("raise ValueError('deep')", 1, "ValueError: deep"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", -signal.SIGKILL, ""),
    ],
)
def test_exit_codes_are_python_s(code, returncode, stderr):
    result = python("-c", code)
    assert result.returncode == returncode and stderr in result.stderr


def test_a_script_gets_its_arguments_folder_environment_and_streams(tmp_path):
    script = tmp_path / "report.py"
    script.write_text(REPORT + "\nimport json; print(__file__, sys.path[0])\n")
    result = python(str(script), "--flag", "value", cwd=tmp_path, env={"MARK": "set", "PATH": "/usr/bin"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"[{str(script)!r}, '--flag', 'value'] {tmp_path} set"
    assert lines[1] == f"{script} {tmp_path}"
    assert result.stderr == "to stderr\n"


def test_a_module_runs_as_main(tmp_path):
    result = python("-u", "-m", "json.tool", "--sort-keys", input='{"b": 1, "a": 2}', cwd=REPO_ROOT)
    assert result.returncode == 0 and result.stdout.split() == ["{", '"a":', "2,", '"b":', "1", "}"]


def test_processes_it_starts_start_the_same_way():
    result = python(
        "-c", "import subprocess, sys; sys.exit(subprocess.run([sys.executable, '-c', 'exit(7)']).returncode)"
    )
    assert result.returncode == 7


def test_a_signal_reaches_the_run():
    run = subprocess.Popen(
        [warm_python(), "-c", "import time; print('up', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert run.stdout.readline() == "up\n"
    started = time.monotonic()
    run.terminate()
    assert run.wait(timeout=30) == -signal.SIGTERM and time.monotonic() - started < 10


def test_an_option_only_python_knows_runs_cold():
    result = python("-X", "utf8", "-c", "import sys; print(sys.flags.utf8_mode, sys.executable)")
    assert result.returncode == 0 and result.stdout.split()[0] == "1"
    assert result.stdout.split()[1] == sys.executable


def test_killing_the_started_process_ends_the_run():
    """SIGKILL to the process a test started (a timeout does that) ends the run, wherever it runs."""
    run = subprocess.Popen(
        [warm_python(), "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    run_pid = int(run.stdout.readline())
    run.kill()
    assert run.wait(timeout=30) == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while not ended(run_pid):
        assert time.monotonic() < deadline, "the run outlived the process that stood for it"
        time.sleep(0.05)


def ended(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# What a warm run must do as a cold one does, each shown against a cold run (`python` itself).
PYTHONS = {"warm": warm_python, "cold": lambda: sys.executable}

LATE_THREAD = """
import atexit, pathlib, sys, threading, time
out = pathlib.Path(sys.argv[1])
def late():
    time.sleep(2)
    out.write_text("thread")
atexit.register(lambda: out.write_text(out.read_text() + ", then atexit"))
threading.Thread(target=late).start()
"""


@pytest.mark.parametrize("start", sorted(PYTHONS))
def test_a_run_waits_for_its_non_daemon_threads_then_runs_atexit(start, tmp_path):
    script, out = tmp_path / "late.py", tmp_path / "out.txt"
    script.write_text(LATE_THREAD)
    started = time.monotonic()
    result = subprocess.run([PYTHONS[start](), str(script), str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert out.read_text() == "thread, then atexit"
    assert time.monotonic() - started >= 2


READ_AT_IMPORT = "import sys, huggingface_hub.constants as c; print(c.ENDPOINT, hash('alt text'), sys.path[1])"


def test_a_run_whose_environment_differs_in_what_is_read_at_import_sees_its_own(tmp_path):
    """HF_ENDPOINT is read when huggingface_hub is imported (the warm server did that), PYTHONHASHSEED when the
    interpreter starts, PYTHONPATH when it sets up sys.path: a run that sets them gets what a cold one gets."""
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "PYTHONHASHSEED": "123", "PYTHONPATH": str(tmp_path)}
    outputs = {start: python_of(start, "-c", READ_AT_IMPORT, env=env) for start in PYTHONS}
    assert outputs["warm"] == outputs["cold"]
    assert outputs["cold"].split()[0] == "http://127.0.0.1:9" and outputs["cold"].split()[2] == str(tmp_path)


def test_a_run_sees_the_variables_set_after_import():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MARK": "x"}
    code = "import os, torch; print(torch.get_num_threads(), os.environ.get('MARK'))"
    assert python_of("warm", "-c", code, env=env) == python_of("cold", "-c", code, env=env) == "1 x\n"


def test_what_a_fork_cannot_give_is_what_the_docstring_says():
    """Warm runs share the server's hash seed (so the multi-process tests start cold), find the stack imported
    (so the environment check of the GPU machine starts cold) and count the server's pages in their resident
    memory (and so in their peak); cold runs draw their own seed (equal with probability 2**-64), import nothing
    and start small."""
    resident = "open('/proc/self/status').read().split('VmRSS:')[1].split()[0]"  # kB, now (the peak survives exec)
    code = f"import sys; print(hash('alt text'), 'torch' in sys.modules, {resident})"
    env = SESSION_ENV  # the server's environment: nothing makes a run cold
    runs = {start: [python_of(start, "-c", code, env=env).split() for _ in range(2)] for start in PYTHONS}
    (warm_hash, warm_torch, warm_kb), (other_warm_hash, _, _) = runs["warm"]
    (cold_hash, cold_torch, cold_kb), (other_cold_hash, _, _) = runs["cold"]
    assert warm_hash == other_warm_hash and cold_hash != other_cold_hash
    assert (warm_torch, cold_torch) == ("True", "False")
    assert int(warm_kb) > 200_000 > 100_000 > int(cold_kb)  # kB: torch and transformers' pages, or a bare python


def python_of(start: str, *args: str, env: dict | None = None) -> str:
    result = subprocess.run([PYTHONS[start](), *args], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout
