"""BackgroundProcess with real, trivial Python children."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from local_stack.processes import BackgroundProcess

GRACEFUL_CHILD = """
import signal, sys, time
def bye(signum, frame):
    print("got SIGTERM", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, bye)
print("child up", flush=True)
while True:
    time.sleep(0.05)
"""

STUBBORN_CHILD = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("child up", flush=True)
while True:
    time.sleep(0.05)
"""


def python_child(source: str, data_dir: Path, name: str = "child") -> BackgroundProcess:
    return BackgroundProcess(name, [sys.executable, "-c", source], data_dir)


def log_lines(process: BackgroundProcess) -> list[str]:
    return process.log_path.read_text().splitlines()


def wait_for_log(process: BackgroundProcess, line: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while line not in log_lines(process):
        assert time.monotonic() < deadline, f"{line!r} never appeared in {process.log_path}"
        time.sleep(0.02)


def test_start_is_detached_logged_and_idempotent(scratch_dir: Path) -> None:
    child = python_child(GRACEFUL_CHILD, scratch_dir)
    try:
        child.start()
        wait_for_log(child, "child up")
        pid = child.pid
        assert pid is not None and child.is_alive()
        assert child.pid_path == scratch_dir / "pids" / "child.pid"
        assert child.pid_path.read_text().strip() == str(pid)
        assert child.log_path == scratch_dir / "logs" / "child.log"
        assert os.getsid(pid) == pid, "the child leads its own session"

        child.start()
        assert child.pid == pid, "a second start leaves the running process alone"
    finally:
        child.stop()
    assert not child.is_alive() and child.pid is None
    assert not child.pid_path.exists()
    wait_for_log(child, "got SIGTERM")
    child.stop()


def test_stop_escalates_to_sigkill(scratch_dir: Path) -> None:
    child = python_child(STUBBORN_CHILD, scratch_dir)
    child.start()
    wait_for_log(child, "child up")
    started = time.monotonic()
    child.stop(timeout=0.5)
    assert not child.is_alive()
    assert time.monotonic() - started < 5


def test_kill_leaves_a_stale_pid_file_that_start_tolerates(scratch_dir: Path) -> None:
    child = python_child(GRACEFUL_CHILD, scratch_dir)
    try:
        child.start()
        wait_for_log(child, "child up")
        first_pid = child.pid
        child.kill()
        assert not child.is_alive()
        assert child.pid_path.exists(), "a crash leaves its pid file behind"
        assert "got SIGTERM" not in log_lines(child)

        child.start()
        assert child.is_alive() and child.pid != first_pid
    finally:
        child.stop()


def test_another_handle_finds_and_stops_the_process(scratch_dir: Path) -> None:
    """As `make down` does from a fresh shell: only the pid file links the two."""
    child = python_child(GRACEFUL_CHILD, scratch_dir)
    try:
        child.start()
        wait_for_log(child, "child up")
        later = python_child(GRACEFUL_CHILD, scratch_dir)
        assert later.pid == child.pid
        later.stop()
        assert not later.is_alive() and not child.is_alive()
    finally:
        child.stop()


def test_a_recycled_or_garbled_pid_is_not_mistaken_for_ours(scratch_dir: Path) -> None:
    child = python_child(GRACEFUL_CHILD, scratch_dir)
    child.pid_path.parent.mkdir(parents=True)
    child.pid_path.write_text("not a pid\n")
    assert not child.is_alive()

    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        child.pid_path.write_text(f"{stranger.pid}\n")
        an_hour_ago = time.time() - 3600
        os.utime(child.pid_path, (an_hour_ago, an_hour_ago))
        assert not child.is_alive(), "a process younger than the pid file is someone else"
        child.stop()
        assert stranger.poll() is None, "stop must not signal a stranger"
    finally:
        stranger.send_signal(signal.SIGKILL)
        stranger.wait()


def test_env_is_laid_over_the_current_environment(scratch_dir: Path) -> None:
    source = "import os; print(os.environ['STACK_TEST_VALUE'], 'PATH' in os.environ, flush=True)"
    child = BackgroundProcess(
        "env", [sys.executable, "-c", source], scratch_dir, env={"STACK_TEST_VALUE": "42"}
    )
    child.start()
    try:
        wait_for_log(child, "42 True")
    finally:
        child.stop()
