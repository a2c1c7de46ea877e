"""Every verb that writes, pointed at a broken output filesystem (read-only, or full), in-process.

Used by ``test_reliability.py`` in two ways: inside ``unshare -m`` with real tmpfs mounts (a
read-only one, and a full one), or, where the test cannot mount, in the test process with the
writers patched to fail as those filesystems make them fail (``patched``). ``python io_walk.py
WORLD.json PARENT RESULT.json [VERBS]`` writes one JSON document: verb -> {code, stdout, stderr, exception}.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
from pathlib import Path
from typing import Any


VERBS = ("resize", "rescale", "merge", "train", "sweep", "export", "report", "recommend", "demo")


def commands(w: dict[str, str], parent: Path) -> dict[str, list[str]]:
    """Verb -> argv, every output under ``parent``."""
    out = {verb: str(parent / verb) for verb in VERBS}
    tiny = ["--batch-size", "2", "--max-len", "32"]
    return {
        "resize": ["resize", w["adapter"], "--rank", "2", "--out", out["resize"]],
        "rescale": ["rescale", w["adapter"], "--scale", "0.5", "--out", out["rescale"]],
        "merge": ["merge", w["adapter"], "--model", w["model"], "--out", out["merge"]],
        "train": ["train", "--model", w["model"], "--data", w["data"], "--rank", "2", "--alpha", "4", "--steps", "1",
                  *tiny, "--out", out["train"]],
        "sweep": ["sweep", "--model", w["model"], "--data", w["data"], "--ranks", "2", "--steps", "1", *tiny,
                  "--devices", "cpu", "--out", out["sweep"]],
        "export": ["export", w["sweep"], "--format", "peft", "--out", out["export"] + ".json"],
        "report": ["report", w["sweep"], "--out", out["report"] + ".html"],
        "recommend": ["recommend", "--model", "llama-2-7b", "--task", "standard", "--examples", "1000",
                      "--export", "axolotl", "--out", out["recommend"] + ".yaml"],
        "demo": ["demo", "--steps", "1", "--out", out["demo"]],
    }


def run_all(w: dict[str, str], parent: Path, verbs: list[str] | None = None) -> dict[str, dict[str, Any]]:
    from typer.testing import CliRunner

    from loradial.cli import app

    runner = CliRunner()
    results = {}
    for verb, argv in commands(w, parent).items():
        if verbs and verb not in verbs:
            continue
        res = runner.invoke(app, argv, catch_exceptions=True)
        exc = res.exception if res.exception is not None and not isinstance(res.exception, SystemExit) else None
        results[verb] = {"code": res.exit_code, "stdout": res.stdout, "stderr": res.stderr,
                         "exception": None if exc is None else f"{type(exc).__name__}: {exc}"}
    return results


@contextlib.contextmanager
def patched(parent: Path, scenario: str):
    """Make writes under ``parent`` fail as a read-only ('ro') or full ('full') filesystem makes them fail:
    read-only refuses to create anything there; full lets names be created but no data be written."""
    import tempfile

    import pytest

    parent = str(parent)
    code = errno.EROFS if scenario == "ro" else errno.ENOSPC

    def under(p: Any) -> bool:
        try:
            return os.path.abspath(os.fspath(p)).startswith(parent)
        except TypeError:
            return False

    def failing(real, where=lambda a, kw: a[0] if a else None):
        def f(*a, **kw):
            p = where(a, kw)
            if p is not None and under(p):
                raise OSError(code, os.strerror(code), os.fspath(p))
            return real(*a, **kw)
        return f

    mp = pytest.MonkeyPatch()
    try:
        if scenario == "ro":
            mp.setattr(os, "mkdir", failing(os.mkdir))
            mp.setattr(tempfile, "mkstemp", failing(tempfile.mkstemp, lambda a, kw: kw.get("dir")))
            mp.setattr(tempfile, "mkdtemp", failing(tempfile.mkdtemp, lambda a, kw: kw.get("dir")))
        else:
            import safetensors.torch
            import transformers.modeling_utils as mu

            real_fsync = os.fsync

            def fsync(fd):  # every atomic file write ends in fsync: the data did not fit
                path = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
                if under(path):
                    raise OSError(code, os.strerror(code))
                return real_fsync(fd)

            mp.setattr(os, "fsync", fsync)
            mp.setattr(safetensors.torch, "save_file", failing(safetensors.torch.save_file, lambda a, kw: a[1] if len(a) > 1 else kw.get("filename")))
            if hasattr(mu, "safe_save_file"):
                mp.setattr(mu, "safe_save_file", failing(mu.safe_save_file, lambda a, kw: a[1] if len(a) > 1 else kw.get("filename")))
        yield
    finally:
        mp.undo()


if __name__ == "__main__":
    world, parent, result = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]), Path(sys.argv[3])
    verbs = sys.argv[4].split(",") if len(sys.argv) > 4 else None
    result.write_text(json.dumps(run_all(world, parent, verbs)))
