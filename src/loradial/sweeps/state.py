"""The sweep directory and its state file: what makes ``--resume`` exact after a kill -9.

Layout of a sweep directory::

    sweep.yaml          the resolved grid and every run setting (written with the directory; ``tune``
                        rewrites it, atomically, when it adds refinement configs between rungs)
    state.json          progress, replaced atomically after every durable event
    metrics.jsonl       training and eval lines of finished pack segments, in a fixed order
    adapters/<config>/  each config's final adapter, PEFT format (written atomically)
    work/               per-config training checkpoints and the running packs' own logs
    results.json        written last

A new sweep first claims its directory (created, or taken empty) and locks it before any slow setup,
so two runs started into the same ``--out`` at once never both run: the second exits 2. sweep.yaml is
written last, in one rename, so a directory without sweep.yaml is never a sweep. ``state.json`` records, per config, the step its checkpoint
holds and its status; and the byte length of metrics.jsonl after the last event, so that a resumed
sweep first cuts metrics.jsonl back to that length (dropping lines of a segment that was killed)
and then replays exactly the steps that were lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any, Iterator

from loradial.errors import LoradialError
from loradial.settings import SweepSettings
from loradial.io import atomic_write_json, atomic_write_text

STATE_VERSION = 1
MARKER = "sweep.yaml"
KILL_ENV = "LORADIAL_SWEEP_KILL"


def fault(point: str) -> None:
    """Test hook for the resume tests: with ``LORADIAL_SWEEP_KILL=<point>`` set, this process kills
    itself with SIGKILL (a real kill -9: no cleanup, no flush) when it reaches ``point``."""
    if os.environ.get(KILL_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclasses.dataclass
class SweepDir:
    root: Path

    @property
    def settings_path(self) -> Path:
        return self.root / MARKER

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def results_path(self) -> Path:
        return self.root / "results.json"

    def adapter_dir(self, name: str) -> Path:
        return self.root / "adapters" / name

    def checkpoint_dir(self, name: str) -> Path:
        return self.root / "work" / "configs" / name

    def pack_dir(self, pack_id: str) -> Path:
        return self.root / "work" / "packs" / pack_id

    # --- state --------------------------------------------------------------------------------
    def read_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self.state_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            raise LoradialError(f"{self.root} has no readable state.json", "start a new sweep with another --out") from None
        if state.get("version") != STATE_VERSION:
            raise LoradialError(f"{self.state_path} has state version {state.get('version')}, expected {STATE_VERSION}")
        return state

    def write_state(self, state: dict[str, Any]) -> None:
        atomic_write_json(self.state_path, state)

    def read_settings(self) -> SweepSettings:
        try:
            text = self.settings_path.read_text()
        except FileNotFoundError:
            raise LoradialError(f"{self.root} is not a sweep directory (no {MARKER})",
                                "pass the --out directory of an earlier `loradial sweep`") from None
        return SweepSettings.from_yaml(text, str(self.settings_path))

    def write_settings(self, settings: SweepSettings) -> None:
        """Replace sweep.yaml atomically (``tune`` adds its refinement configs between rungs)."""
        atomic_write_text(self.settings_path, settings.to_yaml())

    # --- metrics.jsonl --------------------------------------------------------------------------
    def metrics_size(self) -> int:
        return self.metrics_path.stat().st_size if self.metrics_path.exists() else 0

    def truncate_metrics(self, size: int) -> None:
        """Cut metrics.jsonl back to ``size`` bytes (the length state.json vouches for)."""
        if self.metrics_path.exists() and self.metrics_path.stat().st_size > size:
            with open(self.metrics_path, "r+b") as f:
                f.truncate(size)
                f.flush()
                os.fsync(f.fileno())

    def append_metrics(self, text: str) -> int:
        """Append finished lines, fsync'ed; returns the new length for state.json."""
        with open(self.metrics_path, "ab") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
            return f.tell()

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        out = []
        for line in self.metrics_path.read_text().splitlines():
            if line.strip():
                out.append(json.loads(line))
        return out

    def clean_work(self) -> None:
        shutil.rmtree(self.root / "work", ignore_errors=True)

    def lock(self, starting: str | None = None) -> None:
        """Hold an exclusive lock on the sweep for this process's life (released by the OS on any exit,
        kill -9 included), so two processes never run the same sweep at once."""
        import fcntl

        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            if starting:
                raise LoradialError(f"another {starting} is starting or running in {self.root}",
                                    "choose another --out, or wait for that run to end") from None
            raise LoradialError(f"sweep {self.root} is running in another process",
                                "wait for it to end (or stop it) before resuming") from None
        _LOCKS[str(self.root.resolve())] = fd

    def unlock(self) -> None:
        fd = _LOCKS.pop(str(self.root.resolve()), None)
        if fd is not None:
            os.close(fd)


_LOCKS: dict[str, int] = {}


def check_new_sweep_dir(path: str | os.PathLike) -> SweepDir:
    """The output of a new sweep: absent or empty. A finished or running sweep asks for --resume."""
    root = Path(path)
    if str(path) == "":
        raise LoradialError("--out is empty", "give a directory, e.g. --out runs/sweep1")
    if root.exists() and not root.is_dir():
        raise LoradialError(f"output path {root} exists and is a file", "choose a new directory with --out")
    if root.is_dir() and [p for p in root.iterdir() if p.name != ".lock"]:
        if (root / MARKER).exists():
            raise LoradialError(f"{root} already holds a sweep", f"continue it with `loradial sweep --resume {root}`, or choose a new --out")
        raise LoradialError(f"output directory {root} exists and is not a sweep directory",
                            "choose a new (or empty) directory with --out")
    return SweepDir(root)


@contextlib.contextmanager
def claim_new_dir(path: str | os.PathLike, what: str = "sweep") -> Iterator[SweepDir]:
    """Take a new output directory for this process before any slow setup: create it (or take an empty
    one) and hold its lock from that moment, so a second run started at the same time into the same
    ``--out`` gets a clean exit 2 and never replaces this one's files. If the body raises while the
    directory holds nothing but the lock, the claim is undone (a directory this call made is removed)."""
    root = Path(path)
    if not (root / ".lock").exists():  # a directory no loradial run has locked: check it before touching it
        check_new_sweep_dir(root)
    sd = SweepDir(root)
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    sd.lock(starting=what)  # fails (exit 2) when another run holds it: then nothing here is touched
    try:
        check_new_sweep_dir(sd.root)  # again, under the lock: a run that got here first has written its files
        yield sd
    except BaseException:
        if sorted(p.name for p in sd.root.iterdir()) == [".lock"]:
            (sd.root / ".lock").unlink(missing_ok=True)
            sd.unlock()
            if created:
                sd.root.rmdir()
        else:
            sd.unlock()
        raise


def open_sweep_dir(path: str | os.PathLike) -> SweepDir:
    root = Path(path)
    if not root.is_dir():
        raise LoradialError(f"no sweep directory at {root}", "pass the --out directory of an earlier `loradial sweep`")
    sd = SweepDir(root)
    sd.read_settings()
    return sd


def create_sweep_dir(sd: SweepDir, settings_yaml: str, state: dict[str, Any]) -> None:
    """Write a claimed directory's files: state.json and an empty metrics.jsonl, then sweep.yaml last
    (one atomic rename), so a directory whose sweep.yaml exists is always a whole sweep."""
    atomic_write_json(sd.state_path, state)
    sd.metrics_path.touch()
    atomic_write_text(sd.root / MARKER, settings_yaml)
