"""Atomic output: nothing half-written ever appears under a final name.

Files are written to a temporary sibling and renamed into place (``os.replace`` is atomic on
POSIX within one filesystem). Directories are built in a temporary sibling and renamed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from loradial.errors import LoradialError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling, fsync'ed, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def check_output_dir(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse to clobber a non-empty directory unless ``overwrite``; refuse a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LoradialError(f"output path {path} exists and is a file", "choose a directory path with --out")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise LoradialError(f"output directory {path} is not empty", "choose a new --out or pass --overwrite")
    return path


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``path`` in one rename.

    On any exception the temporary directory is removed and ``path`` is left as it was.
    """
    path = check_output_dir(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Read JSON with a clean error for a missing or malformed file."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LoradialError(f"{what} not found: {path}", "check the path") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LoradialError(f"{what} {path} is not valid JSON: {e}", "fix or regenerate the file") from None
