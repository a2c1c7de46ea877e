"""Safe output: nothing half-written, no input deleted, nothing non-finite, no temp file left behind.

Files are written to a temporary sibling and renamed into place (``os.replace`` is atomic on
POSIX within one filesystem). Directories are built in a temporary sibling and renamed. Every
output gets the same mode: 0666 (files) / 0777 (directories) minus the umask, whatever wrote it
(``safetensors`` and ``mkstemp`` create 0600).

Temporary siblings are named ``.<name>.<pid>-<host>.<random>.tmp`` so that the next process
writing ``<name>`` in the same directory can tell the leftovers of a killed process (same host, pid
no longer alive) from the temporaries of one still running, and removes them
(``remove_stale_temps``).

Guards every verb calls before writing: ``check_out_not_overlapping`` (an output equal to,
containing or inside an input is refused, symlinks resolved) and ``check_finite`` (a NaN or Inf
in a tensor about to be published is a runtime error naming the tensor).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from loradial.errors import LoradialError, runtime_failure


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode of every file loradial publishes: 0666 minus the umask (0644 under the usual 022)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    return 0o777 & ~_umask()


# --- temporary siblings ---------------------------------------------------------------------------
def _host() -> str:
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def _temp_prefix(name: str) -> str:
    """``.<name>.<pid>-<host>.``: the owner of a temporary sibling is in its name."""
    return f".{name}.{os.getpid()}-{_host()}."


_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-(?P<host>[0-9a-f]{8})\.(?:[^/]*\.tmp|old)$")
_CLEANED: set[tuple[str, str]] = set()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists (another user's)
        return True
    return True


def remove_stale_temps(directory: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove the temporary siblings a killed process left in ``directory`` (of ``name`` only, if given).

    Only temporaries of this host whose process is gone are removed: a concurrent writer's are
    kept. Returns what was removed."""
    directory = Path(directory)
    removed: list[Path] = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    host = _host()
    for p in entries:
        m = _TEMP.match(p.name)
        if not m or (name is not None and m["name"] != name) or m["host"] != host or _alive(int(m["pid"])):
            continue
        with contextlib.suppress(OSError):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
    return removed


def _clean_once(directory: Path, name: str) -> None:
    """``remove_stale_temps`` for one output name, once per process (outputs are rewritten often)."""
    key = (str(directory.resolve()), name)
    if key not in _CLEANED:
        _CLEANED.add(key)
        remove_stale_temps(directory, name)


def _normalize_modes(root: Path) -> None:
    """Give every file and directory under ``root`` (and ``root``) the usual modes."""
    fm, dm = file_mode(), dir_mode()
    os.chmod(root, dm)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                os.chmod(p, dm)
        for f in filenames:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                os.chmod(p, fm)


# --- atomic writers -------------------------------------------------------------------------------
def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling, fsync'ed, then rename."""
    raw = os.fspath(path)
    if raw == "":
        raise LoradialError("the output path is empty", "give a file name with --out")
    path = Path(raw)
    if path.is_dir():
        raise LoradialError(f"output path {path} is a directory", "give a file name (e.g. --out config.yaml)")
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_once(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())  # mkstemp creates 0600; give the file the usual mode
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
    """Refuse to clobber a non-empty directory unless ``overwrite``; refuse a file and an empty path."""
    if os.fspath(path) == "":
        raise LoradialError("the output path is empty", "give a directory with --out")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LoradialError(f"output path {path} exists and is a file", "choose a directory path with --out")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise LoradialError(f"output directory {path} is not empty", "choose a new --out or pass --overwrite")
    return path


def temp_sibling_dir(path: str | os.PathLike) -> Path:
    """A new empty directory beside ``path`` to build it in (rename it into place when complete). Its name
    carries this process's id, so the next writer of ``path`` removes it should this process die first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_once(path.parent, path.name)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent))
    os.chmod(tmp, dir_mode())  # mkdtemp creates 0700
    return tmp


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``path`` in one rename.

    On any exception the temporary directory is removed and ``path`` is left as it was. What was
    written inside gets the usual modes (see the module docstring) before the rename.
    """
    path = check_output_dir(path, overwrite)
    if path.exists() and _inside(Path.cwd().resolve(), path.resolve()):
        raise LoradialError(f"refusing to replace {path}: it holds the current directory", "choose a new --out directory")
    tmp = temp_sibling_dir(path)
    try:
        yield tmp
        _normalize_modes(tmp)
        if path.exists():
            old = path.with_name(f"{_temp_prefix(path.name)}old")
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


# --- guards ---------------------------------------------------------------------------------------
def _inside(p: Path, root: Path) -> bool:
    """``p`` is ``root`` or lies under it (both resolved)."""
    return p == root or root in p.parents


def check_out_not_overlapping(out: str | os.PathLike, inputs: Iterable[Any], *, out_is_file: bool = False) -> None:
    """Refuse an output that could delete or replace an input (exit 2), ``--overwrite`` or not.

    ``inputs``: (label, path) pairs or plain paths; None entries and paths that do not exist are
    skipped (a Hub id is not a path). Symlinks are resolved. A directory output may be neither
    equal to an input, nor inside one, nor contain one. A file output (``out_is_file``) may not
    be an input, nor contain one."""
    if out is None or os.fspath(out) == "":
        return
    o = Path(out).expanduser().resolve()
    for item in inputs:
        label, p = item if isinstance(item, tuple) else ("input", item)
        if p is None or not isinstance(p, (str, os.PathLike)):
            continue
        raw = Path(p).expanduser()
        if not raw.exists():
            continue
        i = raw.resolve()
        if o == i:
            problem = f"is the {label} itself"
        elif _inside(i, o):
            problem = f"contains the {label} {p}"
        elif not out_is_file and _inside(o, i):
            problem = f"lies inside the {label} {p}"
        else:
            continue
        raise LoradialError(f"--out {out} {problem}: writing there could delete or replace it",
                            f"choose an --out outside {p} (--overwrite never replaces an input)")


def _non_finite(t: Any) -> int:
    """Number of NaN/Inf entries of a torch tensor, numpy array or number (0 for anything else)."""
    if isinstance(t, (int, float)):
        return 0 if math.isfinite(t) else 1
    if hasattr(t, "is_floating_point"):  # torch
        import torch

        if not (t.is_floating_point() or t.is_complex()):
            return 0
        if bool(torch.isfinite(t.sum(dtype=torch.float64))):  # exact for NaN/Inf; overflow falls through
            return 0
        return int((~torch.isfinite(t)).sum())
    if hasattr(t, "dtype") and hasattr(t, "shape"):  # numpy
        import numpy as np

        if not np.issubdtype(t.dtype, np.inexact):
            return 0
        return int((~np.isfinite(t)).sum())
    return 0


def check_finite(tensors: Mapping[str, Any], what: str, hint: str | None = None) -> None:
    """A runtime error (exit 1) naming the first tensor of ``tensors`` with a NaN or Inf: nothing is
    published. ``what`` says whose output it is (e.g. 'the rescaled adapter')."""
    for name, t in tensors.items():
        bad = _non_finite(t)
        if bad:
            shape = "x".join(map(str, getattr(t, "shape", ()))) or "scalar"
            raise runtime_failure(f"{what} would hold {bad:,} non-finite values (NaN or Inf) in {name} ({shape}); "
                                  "nothing was written",
                                  hint or "the numbers overflowed: use a smaller factor, or check the input for NaN/Inf")


# --- errors of the environment --------------------------------------------------------------------
_ENV_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or write elsewhere (nothing half-written was published)",
    errno.EDQUOT: "the disk quota is exhausted: free some space or write elsewhere",
    errno.EROFS: "that filesystem is read-only: choose a writable --out",
    errno.EACCES: "no permission: choose a path you may write (or fix its permissions)",
    errno.EPERM: "no permission: choose a path you may write (or fix its permissions)",
    errno.EMFILE: "too many open files: raise `ulimit -n`",
    errno.EIO: "an I/O error of the disk or network filesystem: check it and run again",
}
_INPUT_ERRNOS = (errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP)


def _public(filename: Any) -> str:
    """A path inside a temporary sibling as the output it stands for ('.../.out.123-ab12cd34.x.tmp/f' -> '.../out/f')."""
    parts = Path(os.fsdecode(filename)).parts
    return str(Path(*[m["name"] if (m := _TEMP.match(part)) else part for part in parts])) if parts else str(filename)


def os_error(e: OSError) -> LoradialError:
    """An OSError as a one-line LoradialError: a missing or mistyped path is bad input (exit 2),
    a full, read-only or forbidden disk is the environment (exit 1)."""
    where = f" {_public(e.filename)}" if e.filename else ""
    if e.filename2:
        where += f" -> {_public(e.filename2)}"
    text = e.strerror or str(e) or type(e).__name__
    if e.errno in _INPUT_ERRNOS:
        return LoradialError(f"{text}:{where}" if where else text, "check the path")
    return runtime_failure(f"{text}" + (f":{where}" if where else ""),
                           _ENV_HINTS.get(e.errno, "check the disk and the path, then run again"))


_RUST_OS = re.compile(r"Os \{ code: (\d+)|\(os error (\d+)\)")


def wrapped_os_error(e: BaseException) -> OSError | None:
    """The OSError inside a library error that wraps one (safetensors' 'IoError(Os { code: 28, ...})')."""
    m = _RUST_OS.search(str(e))
    if m:
        code = int(m.group(1) or m.group(2))
        return OSError(code, os.strerror(code))
    cause = e.__cause__ or e.__context__
    return cause if isinstance(cause, OSError) else None
