"""Detached background processes whose pid and log live under a data folder.

A process started here outlives the Python process that started it (own session), so `make up`
and `make down` can run from different shells: the pid file is the only link between them.
"""

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import psutil

# A pid file is written right after its process starts; a process that is younger than its pid
# file by more than this is a recycled pid, not ours.
_PID_REUSE_SLACK_S = 1.0


def log_tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file, or a note that there is none."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


class BackgroundProcess:
    """One named process: stdout and stderr to `data_dir/logs/<name>.log`, pid in
    `data_dir/pids/<name>.pid`. `env` is laid over the current environment."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        data_dir: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env or {})
        self.cwd = cwd
        self.log_path = data_dir / "logs" / f"{name}.log"
        self.pid_path = data_dir / "pids" / f"{name}.pid"
        self._child: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"BackgroundProcess({self.name!r}, pid={self.pid})"

    @property
    def pid(self) -> int | None:
        """The pid while the process is alive, else None."""
        process = self._live_process()
        return None if process is None else process.pid

    def is_alive(self) -> bool:
        return self._live_process() is not None

    def start(self) -> None:
        """Start detached; a no-op while the process from the pid file is still alive."""
        if self.is_alive():
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.pid_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            log.write(f"--- {stamp} starting: {' '.join(self.argv)}\n".encode())
            log.flush()
            self._child = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                cwd=self.cwd,
                start_new_session=True,
            )
        tmp = self.pid_path.with_suffix(".pid.tmp")
        tmp.write_text(f"{self._child.pid}\n")
        tmp.replace(self.pid_path)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM the process group, wait up to `timeout`, then SIGKILL. Idempotent."""
        process = self._live_process()
        if process is not None:
            self._signal(process, signal.SIGTERM)
            if not self._wait(process, timeout):
                self._signal(process, signal.SIGKILL)
                self._wait(process, 10)
        self.pid_path.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL the process group, as a crash would. The pid file stays behind, stale."""
        process = self._live_process()
        if process is not None:
            self._signal(process, signal.SIGKILL)
            self._wait(process, 10)

    def _read_pid(self) -> int | None:
        try:
            return int(self.pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _live_process(self) -> psutil.Process | None:
        pid = self._read_pid()
        if pid is None:
            return None
        if self._child is not None and self._child.pid == pid and self._child.poll() is not None:
            return None
        try:
            process = psutil.Process(pid)
            if process.status() == psutil.STATUS_ZOMBIE:
                return None
            if process.create_time() > self.pid_path.stat().st_mtime + _PID_REUSE_SLACK_S:
                return None
        except (psutil.NoSuchProcess, FileNotFoundError):
            return None
        return process

    @staticmethod
    def _signal(process: psutil.Process, sig: signal.Signals) -> None:
        """Signal the whole group when the process leads one (it does when we started it)."""
        try:
            if os.getpgid(process.pid) == process.pid:
                os.killpg(process.pid, sig)
            else:
                process.send_signal(sig)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass

    def _wait(self, process: psutil.Process, timeout: float) -> bool:
        """Wait for exit (reaping our own child); True if it exited in time."""
        if self._child is not None and self._child.pid == process.pid:
            try:
                self._child.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while True:
            try:
                if process.status() == psutil.STATUS_ZOMBIE:
                    return True
            except psutil.NoSuchProcess:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
