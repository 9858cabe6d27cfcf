"""One bytecode compilation shared by the Python processes the tests start.

With PYTHONDONTWRITEBYTECODE set (as on the development machines), every Python
process a test starts compiles FastAPI, SQLAlchemy, Celery and the rest from
source: about 8 CPU-seconds each, most of a demo process's start-up on 2 cores.
Pointing PYTHONPYCACHEPREFIX at one directory outside the repository, in the
system's temporary directory, lets the first process compile and every later one
(in this run and the next) read the result. Python checks each cached file
against its source's modification time and size, as it does in __pycache__.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def bytecode_cache_directory() -> Path:
    """The tests' shared bytecode cache: ``$TMPDIR/stackwatch-tests-pycache-<uid>``."""
    return Path(tempfile.gettempdir()) / f"stackwatch-tests-pycache-{os.getuid()}"


def with_bytecode_cache(environment: dict[str, str] | None = None) -> dict[str, str]:
    """``environment`` (default: this process's) with its children sharing the cache."""
    directory = bytecode_cache_directory()
    directory.mkdir(mode=0o700, exist_ok=True)
    shared = dict(os.environ if environment is None else environment)
    shared.pop("PYTHONDONTWRITEBYTECODE", None)
    shared["PYTHONPYCACHEPREFIX"] = str(directory)
    return shared
