"""Read training logs of several trainers into one shape: per adapter, train and eval loss curves.

Formats (``detect`` picks one from the path and its contents):

* ``hf-trainer``  ``trainer_state.json`` (HF Trainer, and so TRL, Axolotl, LLaMA-Factory): its
  ``log_history`` holds ``{"loss", "grad_norm", "learning_rate", "epoch", "step"}`` train entries,
  ``{"eval_loss", ..., "step"}`` eval entries and one closing ``{"train_loss", "train_runtime", ...}``
  summary, which is skipped. A directory is searched for trainer_state.json, then for the last
  ``checkpoint-N/trainer_state.json``.
* ``loradial``    ``metrics.jsonl`` from ``loradial train/sweep``: one JSON object per line,
  ``{"step", "adapter", "loss", "lr", "grad_norm", "tokens", "elapsed"}`` for training (plus
  ``"diverged": true`` on the step where the engine froze a diverged adapter) and
  ``{"step", "adapter", "eval_loss"}`` for evaluations; several adapters (a sweep) in one file.
* ``torchtune``   DiskLogger text ``log_<unix time>.txt``: lines ``Step N | loss:X lr:Y ...``
  (``log_dict``) or ``Step N | name:value`` (``log``); or its ``jsonl`` output, ``{"step": N, "loss": X, ...}``.
* ``litgpt``      ``metrics.csv`` written by Lightning's CSVLogger: train rows with loss, step,
  iter, learning_rate, ...; validation rows with val_loss and val_ppl (other cells empty).
* ``csv`` / ``jsonl`` / ``json``  plain tables with ``step``, ``loss`` and/or ``eval_loss``.

* ``wandb``       a W&B run history export (CSV or JSONL with ``_step``; HF's ``train/global_step`` is the step).
* ``llamafactory`` LLaMA-Factory's ``trainer_log.jsonl`` (``current_steps``, ``loss`` / ``eval_loss``).
* ``tensorboard`` ``events.out.tfevents.*`` files (a file or a run directory), read with the
  ``tensorboard`` package's event reader: scalar tags become keys (``train/loss``, ``eval/loss``, ...).
* ``mlflow``      an MLflow run directory (file store): ``metrics/<key>`` files of ``timestamp value step`` lines.

Key aliases (first present wins): step <- step, global_step, train/global_step, current_steps, iter, _step; train loss <- loss,
train_loss, train/loss; eval loss <- eval_loss, val_loss, validation_loss, eval/loss, val/loss;
lr <- learning_rate, lr, train/learning_rate; grad norm <- grad_norm, train/grad_norm.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable

from loradial.errors import LoradialError

#: The trainer's own step first: W&B history exports carry HF's ``train/global_step`` beside W&B's
#: ``_step`` (a count of log calls); LLaMA-Factory's trainer_log.jsonl names it ``current_steps``.
STEP_KEYS = ("step", "global_step", "train/global_step", "current_steps", "iter", "_step")
LOSS_KEYS = ("loss", "train_loss", "train/loss")
EVAL_KEYS = ("eval_loss", "val_loss", "validation_loss", "eval/loss", "val/loss", "valid_loss")
LR_KEYS = ("learning_rate", "lr", "train/learning_rate")
GRAD_KEYS = ("grad_norm", "train/grad_norm", "gradient_norm")
DEFAULT_ADAPTER = "default"

EXPECTED = ("expected trainer_state.json (HF Trainer/TRL/Axolotl/LLaMA-Factory), loradial metrics.jsonl, "
            "litgpt metrics.csv, torchtune log_*.txt, LLaMA-Factory trainer_log.jsonl, a W&B history export, "
            "TensorBoard event files, an MLflow run directory, or a CSV/JSONL with step, loss, eval_loss")


@dataclasses.dataclass
class Curve:
    """One adapter's curves, sorted by step (a re-logged step keeps its last value)."""

    adapter: str
    steps: list[float] = dataclasses.field(default_factory=list)
    loss: list[float] = dataclasses.field(default_factory=list)
    lr: list[float | None] = dataclasses.field(default_factory=list)
    grad_norm: list[float | None] = dataclasses.field(default_factory=list)
    eval_steps: list[float] = dataclasses.field(default_factory=list)
    eval_loss: list[float] = dataclasses.field(default_factory=list)
    diverged_at: float | None = None
    """loradial's engine marks the step where it froze a diverged adapter (``"diverged": true``)."""


@dataclasses.dataclass
class LogData:
    path: str
    format: str
    curves: dict[str, Curve]


def _num(value: Any) -> float | None:
    """A float from a number or numeric string ('nan' and 'inf' kept); None for missing/empty."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            return float(text)
        except ValueError:
            return None
    if isinstance(value, list) and len(value) == 1:  # torchtune jsonl dumps 0-d tensors via tolist()
        return _num(value[0])
    return None


def _first(record: dict[str, Any], keys: Iterable[str]) -> float | None:
    for key in keys:
        if key in record:
            v = _num(record[key])
            if v is not None:
                return v
    return None


def curves_from_records(records: list[dict[str, Any]], adapter_key: str | None = "adapter") -> dict[str, Curve]:
    """Split normalized records into per-adapter train/eval curves."""
    train: dict[str, dict[float, tuple[float, float | None, float | None]]] = {}
    evals: dict[str, dict[float, float]] = {}
    diverged: dict[str, float] = {}
    order: list[str] = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            continue
        name = str(rec.get(adapter_key)) if adapter_key and rec.get(adapter_key) is not None else DEFAULT_ADAPTER
        step = _first(rec, STEP_KEYS)
        ev = _first(rec, EVAL_KEYS)
        loss = _first(rec, LOSS_KEYS)
        if loss is None and ev is None:
            continue
        if name not in order:
            order.append(name)
        if step is None:
            step = float(i)
        if ev is not None:
            evals.setdefault(name, {})[step] = ev
        if loss is not None:
            train.setdefault(name, {})[step] = (loss, _first(rec, LR_KEYS), _first(rec, GRAD_KEYS))
        if rec.get("diverged") is True and name not in diverged:
            diverged[name] = step
    out: dict[str, Curve] = {}
    for name in order:
        c = Curve(name, diverged_at=diverged.get(name))
        for step in sorted(train.get(name, {})):
            loss, lr, gn = train[name][step]
            c.steps.append(step)
            c.loss.append(loss)
            c.lr.append(lr)
            c.grad_norm.append(gn)
        for step in sorted(evals.get(name, {})):
            c.eval_steps.append(step)
            c.eval_loss.append(evals[name][step])
        out[name] = c
    return out


# --- readers -------------------------------------------------------------------------------------
def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LoradialError(f"log not found: {path}", EXPECTED) from None
    except UnicodeDecodeError:
        raise LoradialError(f"log {path} is not text", EXPECTED) from None


def _json_records(text: str, path: Path) -> list[dict[str, Any]]:
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise LoradialError(f"{path}:{n} is not a JSON object", EXPECTED) from None
        if isinstance(obj, dict):
            records.append(obj)
    return records


def read_hf_trainer_state(path: Path) -> list[dict[str, Any]]:
    try:
        state = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise LoradialError(f"{path} is not valid JSON: {e}", EXPECTED) from None
    history = state.get("log_history") if isinstance(state, dict) else None
    if not isinstance(history, list):
        raise LoradialError(f"{path} has no log_history", EXPECTED)
    return [r for r in history if isinstance(r, dict) and "train_runtime" not in r]


_TT_LINE = re.compile(r"^\s*Step\s+(\d+)\s*\|\s*(.*)$")
_TT_PAIR = re.compile(r"([\w./-]+):\s*(\S+)")


def read_torchtune_txt(text: str) -> list[dict[str, Any]]:
    """DiskLogger text: 'Step N | loss:1.2 lr:3e-4 ' per line (or one metric per line)."""
    merged: dict[int, dict[str, Any]] = {}
    for line in text.splitlines():
        m = _TT_LINE.match(line)
        if not m:
            continue
        step = int(m.group(1))
        rec = merged.setdefault(step, {"step": step})
        for key, value in _TT_PAIR.findall(m.group(2)):
            rec[key] = value
    return [merged[s] for s in sorted(merged)]


def read_csv_records(text: str) -> tuple[list[dict[str, Any]], list[str]]:
    reader = csv.DictReader(io.StringIO(text))
    rows = [dict(r) for r in reader]
    return rows, list(reader.fieldnames or [])


def read_tensorboard(path: Path) -> list[dict[str, Any]]:
    """Scalars of TensorBoard event files (a file, or every event file of a directory) as step records."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        raise LoradialError("reading TensorBoard event files needs the tensorboard package",
                            "pip install tensorboard (or export the run's scalars as CSV)") from None
    files = [path] if path.is_file() else sorted(path.rglob("events.out.tfevents.*"))
    merged: dict[int, dict[str, Any]] = {}
    for f in files:
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        try:
            acc.Reload()
        except Exception as e:  # noqa: BLE001 - a damaged event file is the user's input
            raise LoradialError(f"could not read TensorBoard events {f}: {e}", EXPECTED) from None
        for tag in acc.Tags().get("scalars", []):
            for ev in acc.Scalars(tag):
                merged.setdefault(int(ev.step), {"step": int(ev.step)})[tag] = float(ev.value)
    return [merged[s] for s in sorted(merged)]


def read_mlflow(run: Path) -> list[dict[str, Any]]:
    """An MLflow file-store run: ``metrics/<key>`` files, one ``timestamp value step`` line per logged value."""
    merged: dict[int, dict[str, Any]] = {}
    root = run / "metrics"
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        key = f.relative_to(root).as_posix()
        for line in _read_text(f).splitlines():
            parts = line.split()
            if len(parts) >= 3 and _num(parts[1]) is not None and parts[2].lstrip("-").isdigit():
                merged.setdefault(int(parts[2]), {"step": int(parts[2])})[key] = _num(parts[1])
    return [merged[s] for s in sorted(merged)]


def _find_in_dir(path: Path) -> Path:
    if (path / "metrics").is_dir() and (path / "meta.yaml").is_file():
        return path  # an MLflow run directory
    if any(path.glob("events.out.tfevents.*")) or any(path.glob("*/events.out.tfevents.*")):
        return path  # a TensorBoard run directory
    for name in ("trainer_state.json", "metrics.jsonl", "metrics.csv", "trainer_log.jsonl"):
        if (path / name).is_file():
            return path / name
    ckpts = sorted((p for p in path.glob("checkpoint-*") if (p / "trainer_state.json").is_file()),
                   key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1)
    if ckpts:
        return ckpts[-1] / "trainer_state.json"
    logs = sorted(path.glob("log_*.txt")) + sorted(path.glob("log_*.jsonl"))
    if logs:
        return logs[-1]
    raise LoradialError(f"no training log found in directory {path}", EXPECTED)


def read_log(path: str | Path) -> LogData:
    """Detect the format of ``path`` (a file or a run directory) and read its curves."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = _find_in_dir(p)
    if not p.exists():
        raise LoradialError(f"log not found: {p}", EXPECTED)
    suffix = p.suffix.lower()
    adapter_key: str | None = "adapter"
    if p.is_dir() and (p / "metrics").is_dir():
        fmt, records, adapter_key = "mlflow", read_mlflow(p), None
    elif p.is_dir() or p.name.startswith("events.out.tfevents."):
        fmt, records, adapter_key = "tensorboard", read_tensorboard(p), None
    elif suffix == ".json":
        text = _read_text(p)
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise LoradialError(f"{p} is not valid JSON: {e}", EXPECTED) from None
        if isinstance(obj, dict) and "log_history" in obj:
            fmt, records = "hf-trainer", read_hf_trainer_state(p)
        elif isinstance(obj, list):
            fmt, records = "json", [r for r in obj if isinstance(r, dict)]
        else:
            raise LoradialError(f"unknown log format: {p} is JSON without log_history", EXPECTED)
    elif suffix == ".jsonl":
        records = _json_records(_read_text(p), p)
        if any("adapter" in r for r in records):
            fmt = "loradial"
        elif any("tokens_per_second_per_gpu" in r for r in records):
            fmt = "torchtune"
        elif any("current_steps" in r for r in records):
            fmt = "llamafactory"
        elif any("_step" in r for r in records):
            fmt = "wandb"
        else:
            fmt = "jsonl"
    elif suffix == ".csv":
        records, fields = read_csv_records(_read_text(p))
        fmt = ("litgpt" if {"val_ppl", "iter_time", "total_tokens"} & set(fields) else
               "wandb" if "_step" in fields else "csv")
    elif suffix in (".txt", ".log"):
        records = read_torchtune_txt(_read_text(p))
        if not records:
            raise LoradialError(f"unknown log format: {p} has no 'Step N | key:value' lines", EXPECTED)
        fmt, adapter_key = "torchtune", None
    else:
        raise LoradialError(f"unknown log format: {p.name}", EXPECTED)
    curves = curves_from_records(records, adapter_key)
    if not any(c.loss or c.eval_loss for c in curves.values()):
        raise LoradialError(f"no loss entries in {p}", "expected per-step 'loss' (and optionally 'eval_loss') values")
    if not any(c.loss for c in curves.values()):
        raise LoradialError(f"no training loss entries in {p} (only eval loss)", "expected per-step 'loss' values")
    return LogData(str(p), fmt, curves)


def finite(values: Iterable[float]) -> bool:
    return all(math.isfinite(v) for v in values)
