"""Resumable engine state on disk: ``state.safetensors`` (tensors) + ``state.json`` (everything else).

Tensors: each active adapter's factors and AdamW moments (``active/<name>/<module>.<A|B|magnitude>[.exp_avg|.exp_avg_sq]``,
PEFT orientation, unpadded), finished adapters' factors (``finished/<name>/...``) and the RNG
states (``rng/cpu``, ``rng/cuda``). JSON: step, total steps, data position (epoch, cursor),
adapter configs, statuses, frozen flags, AdamW step counts, elapsed time and the run's settings.
No pickle. The directory is written beside its final name and renamed into place, so a kill
leaves the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loradial.errors import LoradialError
from loradial.io import atomic_dir, atomic_write_json, read_json

FORMAT = 1
DIRNAME = "checkpoint"


def save_checkpoint(engine, out: str | Path, run: dict[str, Any]) -> Path:
    """Write the engine's state under ``out/checkpoint`` atomically; returns that path."""
    from safetensors.torch import save_file

    tensors, meta = engine.state_dict()
    meta = {"format": FORMAT, **meta, "run": run}
    path = Path(out) / DIRNAME
    with atomic_dir(path, overwrite=True) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "state.safetensors"))
        atomic_write_json(tmp / "state.json", meta)
    return path


def find_checkpoint(out: str | Path) -> Path:
    """``out/checkpoint``, or the previous one if a kill struck between the two renames of a save."""
    out = Path(out).expanduser()
    path = out / DIRNAME
    if (path / "state.json").is_file():
        return path
    olds = sorted(out.glob(f".{DIRNAME}.old-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in olds:
        if (old / "state.json").is_file():
            return old
    raise LoradialError(f"no checkpoint in {out}", "resume a run that was started with --save-every N")


def load_checkpoint(out: str | Path) -> tuple[dict, dict[str, Any]]:
    """(tensors, metadata) of the checkpoint of run directory ``out``."""
    from safetensors.torch import load_file

    path = find_checkpoint(out)
    meta = read_json(path / "state.json", "checkpoint state")
    if meta.get("format") != FORMAT:
        raise LoradialError(f"checkpoint {path} has format {meta.get('format')!r}, expected {FORMAT}",
                            "resume it with the loradial version that wrote it")
    try:
        tensors = load_file(str(path / "state.safetensors"))
    except Exception as e:
        raise LoradialError(f"could not read {path / 'state.safetensors'}: {e}", "the checkpoint is damaged") from None
    return tensors, meta


def truncate_metrics(path: str | Path, step: int) -> None:
    """Keep only the metrics lines of steps <= ``step`` (those after it are re-made by the resumed run)."""
    path = Path(path)
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line + "\n")
        except json.JSONDecodeError:  # a line cut by the kill
            continue
    from loradial.io import atomic_write_text

    atomic_write_text(path, "".join(keep))
