"""The tests' warm `python` (conftest.python_for_runs) behaves as `python` does for what the tests read: exit
codes, output, arguments, working directory, environment, signals. Were it to lose an exit code, every test
that checks a run's exit code would pass whatever the run did."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import REPO_ROOT, python_for_runs

REPORT = "import os, sys; print(sys.argv, os.getcwd(), os.environ.get('MARK')); print('to stderr', file=sys.stderr)"


def python(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([python_for_runs(), *args], capture_output=True, text=True, timeout=120, **kwargs)


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
        [python_for_runs(), "-c", "import time; print('up', flush=True); time.sleep(60)"],
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
        [python_for_runs(), "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(60)"],
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
