"""EmbeddedPostgres: a real PostgreSQL from the pgserver wheel."""

import socket
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from local_stack.ports import port_accepts
from local_stack.postgres import EmbeddedPostgres, PostgresError


@pytest.fixture(scope="module")
def cluster(module_scratch_dir: Path) -> EmbeddedPostgres:
    """One cluster for the module (initdb is the slow part); each test starts it itself."""
    return EmbeddedPostgres(module_scratch_dir / "postgres", port=0)


@pytest.fixture
def postgres(cluster: EmbeddedPostgres) -> Iterator[EmbeddedPostgres]:
    """The module's cluster, stopped again after each test."""
    try:
        yield cluster
    finally:
        cluster.stop()


async def test_start_restart_persist_stop(postgres: EmbeddedPostgres) -> None:
    assert not postgres.is_running()
    postgres.start()
    assert (postgres.pgdata / "PG_VERSION").exists()
    assert postgres.is_running()
    assert postgres.url() == f"postgresql://postgres@127.0.0.1:{postgres.port}/billing"

    conn = await asyncpg.connect(postgres.url())
    try:
        await conn.execute("CREATE TABLE marks (id int PRIMARY KEY, note text NOT NULL)")
        await conn.execute("INSERT INTO marks VALUES (1, 'before restart')")
        server_address = await conn.fetchval("SELECT inet_server_addr()::text")
        assert server_address == "127.0.0.1/32"
    finally:
        await conn.close()

    port = postgres.port
    postgres.start()  # idempotent
    postgres.restart()
    assert postgres.port == port and postgres.is_running()

    conn = await asyncpg.connect(postgres.url())
    try:
        assert await conn.fetchval("SELECT note FROM marks WHERE id = 1") == "before restart"
    finally:
        await conn.close()

    postgres.stop()
    assert not postgres.is_running()
    assert not port_accepts(port)
    postgres.stop()  # idempotent


async def test_recovers_after_a_crash(postgres: EmbeddedPostgres) -> None:
    postgres.start()
    conn = await asyncpg.connect(postgres.url())
    await conn.execute("CREATE TABLE crash_marks (id int PRIMARY KEY)")
    await conn.execute("INSERT INTO crash_marks VALUES (1)")
    await conn.close()

    postgres.kill()
    assert not postgres.is_running()
    assert (postgres.pgdata / "postmaster.pid").exists(), "a crash leaves the lock file"
    postgres.start()
    postgres.restart(mode="immediate")

    conn = await asyncpg.connect(postgres.url())
    try:
        assert await conn.fetchval("SELECT count(*) FROM crash_marks") == 1
    finally:
        await conn.close()


async def test_a_second_handle_sees_the_running_server(postgres: EmbeddedPostgres) -> None:
    postgres.start()
    other = EmbeddedPostgres(postgres.data_dir, port=0)
    assert other.is_running()
    other.start()
    assert other.port == postgres.port, "port 0 adopts the port the server already runs on"
    other.ensure_database("extra")
    conn = await asyncpg.connect(other.url("extra"))
    await conn.close()
    other.stop()
    assert not postgres.is_running()


def test_start_failure_shows_the_server_log(postgres: EmbeddedPostgres) -> None:
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
        squatter.bind(("127.0.0.1", postgres.port))
        squatter.listen()
        with pytest.raises(PostgresError, match=r"could not bind|Address already in use"):
            postgres.start()
    assert not postgres.is_running()
