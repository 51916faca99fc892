"""The `python` of the tests' warm runs (tests/warm_start.py): a client that asks the warm server to run its
command line and then stands in for that run: the same stdin, stdout and stderr (passed to the server), the
same exit code, and the signals it receives passed on. Only the standard library: it starts in milliseconds.

A command line this does not understand (an interpreter option other than -u, -c and -m) runs cold, as
`python` itself would run it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys

PID_FILE = "WARM_PYTHON_PID_FILE"  # where to write the run's process id, when set
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


def main(server: str) -> None:
    """Run `python *sys.argv[1:]` through the warm server listening on the Unix socket `server`."""
    run = parse(sys.argv[1:]) if os.path.exists(server) else None
    if run is None:
        os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
    env = {name: value for name, value in os.environ.items() if name != PID_FILE}  # not for the run's own children
    run.update(executable=os.path.abspath(sys.argv[0]), cwd=os.getcwd(), env=env)
    request = json.dumps(run).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.connect(server)
        socket.send_fds(connection, [len(request).to_bytes(8, "big")], [0, 1, 2])
        connection.sendall(request)
        replies = connection.makefile("r")
        pid = int(replies.readline())
        if os.environ.get(PID_FILE):  # for a test that signals the run itself (conftest.start_recipe)
            with open(os.environ[PID_FILE] + ".part", "w") as file:
                file.write(str(pid))
            os.replace(os.environ[PID_FILE] + ".part", os.environ[PID_FILE])
        for number in FORWARDED_SIGNALS:
            signal.signal(number, lambda received, _: os.kill(pid, received))
        line = replies.readline()
    code = int(line) if line else 1
    if code < 0:  # ended by a signal: end the same way
        if -code not in (signal.SIGKILL, signal.SIGSTOP):  # the two whose handling cannot be set
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)
