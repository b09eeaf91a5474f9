"""A real PostgreSQL 16 from the `pgserver` wheel, listening on 127.0.0.1 only.

`pg_ctl` daemonizes the server, so its pid lives in `<data_dir>/pgdata/postmaster.pid` and any
later shell can stop it. PostgreSQL refuses to run as root; as root we run its binaries as the
`pgserver` system user, who must own the data folder and be able to reach it.
"""

import importlib.util
import os
import pwd
import stat
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import psutil

from local_stack.ports import LOOPBACK, free_port
from local_stack.processes import log_tail

SYSTEM_USER = "pgserver"
SUPERUSER = "postgres"
DEFAULT_DATABASE = "billing"

ShutdownMode = Literal["smart", "fast", "immediate"]


class PostgresError(RuntimeError):
    """The embedded server could not be initialised, started or stopped."""


_GROUP_OTHER_RX = stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
_GROUP_OTHER_R = stat.S_IRGRP | stat.S_IROTH


def postgres_install_dir() -> Path:
    """The PostgreSQL build inside the `pgserver` wheel (found without importing pgserver,
    whose import has side effects)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresError("the pgserver package is not installed; run `make venv`")
    install = Path(next(iter(spec.submodule_search_locations))) / "pginstall"
    if not (install / "bin" / "postgres").exists():
        raise PostgresError(f"no PostgreSQL binaries under {install}")
    return install


class EmbeddedPostgres:
    """One PostgreSQL cluster under `data_dir`: `pgdata/` and `postgres.log`.

    `port=0` picks a free port now and keeps it for every later start.
    """

    def __init__(self, data_dir: Path, port: int = 0) -> None:
        self.data_dir = data_dir.absolute()
        self.pgdata = self.data_dir / "pgdata"
        self.log_path = self.data_dir / "postgres.log"
        self._port_requested = port
        self.port = port or free_port()
        self._system_user = SYSTEM_USER if os.geteuid() == 0 else None
        self._bin = postgres_install_dir() / "bin"

    def __repr__(self) -> str:
        return f"EmbeddedPostgres({str(self.data_dir)!r}, port={self.port})"

    def url(self, database: str = DEFAULT_DATABASE) -> str:
        return f"postgresql://{SUPERUSER}@{LOOPBACK}:{self.port}/{database}"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs, else None."""
        info = self._postmaster_info()
        if info is None:
            return None
        try:
            process = psutil.Process(info[0])
            if process.status() == psutil.STATUS_ZOMBIE or process.name() != "postgres":
                return None
        except psutil.NoSuchProcess:
            return None
        return info[0]

    def is_running(self) -> bool:
        return self.pid is not None

    def start(self) -> None:
        """Initialise if needed, start if not running, and create the `billing` database."""
        if self.is_running():
            self._adopt_running_port()
        else:
            self._prepare_folders()
            if not (self.pgdata / "PG_VERSION").exists():
                self._initdb()
            # After a crash the lock file may name a dead or zombie postmaster, which
            # PostgreSQL itself would still count as alive.
            (self.pgdata / "postmaster.pid").unlink(missing_ok=True)
            server_options = f"-h {LOOPBACK} -p {self.port} -k ''"
            self._pg_ctl(
                ["-w", "-t", "60", "-l", str(self.log_path), "-o", server_options, "start"]
            )
        self.ensure_database(DEFAULT_DATABASE)

    def stop(self, mode: ShutdownMode = "fast") -> None:
        """Stop the server; `fast` rolls back open transactions, `immediate` is a crash."""
        if not self.is_running():
            return
        self._pg_ctl(["-w", "-t", "60", "-m", mode, "stop"])

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would; the next start recovers from the WAL."""
        pid = self.pid
        if pid is None:
            return
        process = psutil.Process(pid)
        process.kill()
        deadline = time.monotonic() + 10
        while self.is_running() and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart(self, mode: ShutdownMode = "fast") -> None:
        self.stop(mode)
        self.start()

    def ensure_database(self, name: str) -> None:
        """Create database `name` unless it exists."""
        script = (
            "SELECT 'CREATE DATABASE ' || quote_ident(:'name') "
            "WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'name') \\gexec\n"
        )
        psql = [
            str(self._bin / "psql"),
            *("-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", f"name={name}"),
            *("-h", LOOPBACK, "-p", str(self.port), "-U", SUPERUSER, "-d", "postgres"),
        ]
        result = subprocess.run(
            psql, input=script, capture_output=True, text=True, timeout=60, check=False
        )
        if result.returncode != 0:
            raise PostgresError(f"could not create database {name!r}: {result.stderr.strip()}")

    def _postmaster_info(self) -> tuple[int, int | None] | None:
        """(pid, port) from postmaster.pid, or None when there is none."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            pid = int(lines[0])
        except (FileNotFoundError, PermissionError, IndexError, ValueError):
            return None
        port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
        return pid, port

    def _adopt_running_port(self) -> None:
        info = self._postmaster_info()
        running_port = None if info is None else info[1]
        if running_port is None or running_port == self.port:
            return
        if self._port_requested:
            raise PostgresError(
                f"PostgreSQL in {self.pgdata} already runs on port {running_port}, "
                f"not {self.port}; stop it first"
            )
        self.port = running_port

    def _prepare_folders(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        owner = self._owner()
        if owner is None:
            return
        install = self._bin.parent
        for path in (self.data_dir, install):
            _make_parents_traversable(path)
        _grant_read(install)
        os.chown(self.data_dir, owner.pw_uid, owner.pw_gid)
        if self.log_path.exists():
            os.chown(self.log_path, owner.pw_uid, owner.pw_gid)

    def _owner(self) -> pwd.struct_passwd | None:
        """The system user that runs PostgreSQL when we are root; None means ourselves."""
        return None if self._system_user is None else _ensure_system_user(self._system_user)

    def _initdb(self) -> None:
        self._run_as_owner(
            "initdb",
            ["-D", str(self.pgdata), "--auth=trust", "-U", SUPERUSER, "--encoding=utf8"],
        )

    def _pg_ctl(self, args: Sequence[str]) -> None:
        self._run_as_owner("pg_ctl", ["-D", str(self.pgdata), *args])

    def _run_as_owner(self, program: str, args: Sequence[str]) -> None:
        """Run a server binary as the data folder's owner, failing with its output and log."""
        # pg_ctl's server inherits stdout, so a pipe would never reach EOF: use a file.
        owner = self._owner()
        with tempfile.TemporaryFile("w+") as output:
            result = subprocess.run(
                [str(self._bin / program), *args],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=self.data_dir,
                user=None if owner is None else owner.pw_uid,
                group=None if owner is None else owner.pw_gid,
                extra_groups=None if owner is None else [],
                timeout=120,
                check=False,
            )
            output.seek(0)
            text = output.read().strip()
        if result.returncode != 0:
            raise PostgresError(
                f"{program} {' '.join(args)} failed (exit {result.returncode}):\n{text}\n"
                f"--- {self.log_path} (tail) ---\n{log_tail(self.log_path)}"
            )


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", name], check=True)
        return pwd.getpwnam(name)


def _make_parents_traversable(path: Path) -> None:
    """Let other users read and traverse every folder above `path`."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if mode & _GROUP_OTHER_RX != _GROUP_OTHER_RX:
            parent.chmod(mode | _GROUP_OTHER_RX)


def _grant_read(root: Path) -> None:
    """Let other users read everything under `root`, and run what its owner can run."""
    for folder, _, files in os.walk(root):
        folder_path = Path(folder)
        folder_path.chmod(folder_path.stat().st_mode | _GROUP_OTHER_RX)
        for name in files:
            file_path = folder_path / name
            mode = file_path.stat().st_mode
            wanted = _GROUP_OTHER_R
            if mode & stat.S_IXUSR:
                wanted |= _GROUP_OTHER_RX
            if mode & wanted != wanted:
                file_path.chmod(mode | wanted)
