"""loradial inside the trainers users already run: one ``transformers.TrainerCallback``.

HF ``Trainer`` and everything built on it (TRL's trainers, Axolotl, LLaMA-Factory) takes callbacks::

    from loradial.integrations import LoradialCallback
    trainer = SFTTrainer(model, args=args, train_dataset=ds, peft_config=lora, callbacks=[LoradialCallback()])

What it does, on the main process only:

* writes loradial's ``metrics.jsonl`` (the line format the engine writes: ``{"step", "adapter", "loss",
  "lr", "grad_norm", "elapsed"}`` per logged training step, ``{"step", "adapter", "eval_loss",
  "elapsed"}`` per evaluation; the step is the trainer's global step) and the run's PEFT
  ``adapter_config.json`` beside it, in ``<output_dir>/loradial/`` unless told otherwise, so that
  ``loradial diagnose <that dir>/metrics.jsonl`` works after the run, with concrete next configs;
* at each evaluation, prints ``loradial.diagnose``'s verdict and first next step on the metrics so
  far (with few points the verdict says so; a run with no train loss yet is not judged);
* at the end of training, saves the adapter to a temporary directory, runs ``loradial.analyze`` on it
  and prints the spectrum summary (energy and effective ranks, the recommended rank); the result is
  written as ``analysis.json``.

A resumed run (``state.global_step > 0`` at the start) keeps the lines of the steps already done.
The diagnoses and the analysis are also kept on the callback (``diagnoses``, ``analysis``).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from transformers import TrainerCallback

from loradial.errors import LoradialError

ADAPTER = "default"


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def metrics_rows(logs: dict[str, Any], step: int, adapter: str, elapsed: float) -> list[dict[str, Any]]:
    """An HF Trainer ``logs`` dict as loradial metrics lines (none for a log with neither loss)."""
    rows = []
    if isinstance(logs.get("loss"), (int, float)):
        rows.append({"step": step, "adapter": adapter, "loss": float(logs["loss"]), "lr": logs.get("learning_rate"),
                     "grad_norm": logs.get("grad_norm"), "elapsed": round(elapsed, 4)})
    if isinstance(logs.get("eval_loss"), (int, float)):
        rows.append({"step": step, "adapter": adapter, "eval_loss": float(logs["eval_loss"]), "elapsed": round(elapsed, 4)})
    return [_finite(r) for r in rows]


def peft_config_dict(model: Any) -> dict[str, Any] | None:
    """The active PEFT adapter's config (a ``PeftModel`` or a transformers model with an adapter added), as saved."""
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict) or not configs:
        return None
    name = getattr(model, "active_adapter", None)
    name = name() if callable(name) else name
    if isinstance(name, (list, tuple)):
        name = name[0] if name else None
    cfg = configs.get(name) or next(iter(configs.values()))
    return json.loads(json.dumps(cfg.to_dict(), default=lambda o: sorted(o) if isinstance(o, set) else str(o)))


def diagnosis_line(d) -> str:
    """One line: verdict, the first piece of evidence and the first next step."""
    line = f"loradial diagnose: {d.verdict}"
    if d.summary:
        line += f" - {d.summary[0]}"
    if d.next:
        step = d.next[0]
        what = step.get("command") or ", ".join(f"{k}={v}" for k, v in (step.get("config") or {}).items())
        line += f"; next: {step['action']}" + (f" ({what})" if what else "")
    return line


def analysis_line(res) -> str:
    o = res.summary["overall"]
    rec = res.recommendation
    return (f"loradial analyze: {o['n_modules']} modules, r={'/'.join(map(str, o['r']))}; mean energy rank (90%) "
            f"{o['mean_energy_rank_90']:.1f}, effective rank {o['mean_effective_rank']:.1f}, utilization "
            f"{o['mean_utilization']:.0%}; recommended rank {rec['rank']} (keeps >= {rec['energy']:.0%} energy in "
            f"{rec['modules_meeting_energy']:.0%} of modules)")


class LoradialCallback(TrainerCallback):
    """See the module docstring. ``out``: where metrics.jsonl and the rest go (default
    ``<output_dir>/loradial``); ``diagnose`` / ``analyze``: turn the eval verdicts / the end-of-training
    spectrum off; ``echo``: where the lines go (default: loradial's stderr console)."""

    def __init__(self, out: str | Path | None = None, adapter: str = ADAPTER, diagnose: bool = True,
                 analyze: bool = True, echo: Callable[[str], None] | None = None):
        self.out = Path(out) if out is not None else None
        self.adapter, self.diagnose, self.analyze = adapter, diagnose, analyze
        self.echo = echo or _console_echo
        self.dir: Path | None = None
        self.diagnoses: list[Any] = []
        self.analysis = None
        self._t0 = time.perf_counter()

    @property
    def metrics_path(self) -> Path | None:
        return None if self.dir is None else self.dir / "metrics.jsonl"

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        self.dir = self.out or Path(args.output_dir) / "loradial"
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.metrics_path
        if state.global_step > 0:
            from loradial.engine.checkpoint import truncate_metrics

            truncate_metrics(path, state.global_step)
        else:
            path.write_text("", encoding="utf-8")
        cfg = peft_config_dict(model)
        if cfg is not None:
            from loradial.io import atomic_write_json

            atomic_write_json(self.dir / "adapter_config.json", cfg)
        self._t0 = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.dir is None or not logs:
            return
        rows = metrics_rows(logs, state.global_step, self.adapter, time.perf_counter() - self._t0)
        if rows:
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write("".join(json.dumps(r) + "\n" for r in rows))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not (state.is_world_process_zero and self.diagnose and self.dir is not None):
            return
        from loradial.advice.diagnosis import diagnose

        text = self.metrics_path.read_text(encoding="utf-8")
        if '"loss"' not in text:
            self.echo(f"loradial diagnose: no training loss logged yet at step {state.global_step} "
                      "(set logging_steps below eval_steps)")
            return
        try:
            d = diagnose(self.metrics_path)
        except LoradialError as e:
            self.echo(f"loradial diagnose: {e.message}")
            return
        self.diagnoses.append(d)
        self.echo(f"[step {state.global_step}] " + diagnosis_line(d))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not (state.is_world_process_zero and self.analyze and self.dir is not None):
            return
        if peft_config_dict(model) is None:
            self.echo("loradial analyze: the model has no PEFT adapter; nothing to analyze")
            return
        from loradial.adapters.analysis import analyze
        from loradial.io import atomic_write_json

        with tempfile.TemporaryDirectory(prefix="loradial-adapter-") as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            try:
                self.analysis = analyze(tmp)
            except LoradialError as e:
                self.echo(f"loradial analyze: {e.message}" + (f" ({e.hint})" if e.hint else ""))
                return
        res = self.analysis.to_dict()
        res["adapter"] = "<trained adapter>"
        atomic_write_json(self.dir / "analysis.json", res)
        self.echo(analysis_line(self.analysis))


def _console_echo(line: str) -> None:
    from loradial.console import console

    console.print(line, markup=False, highlight=False)
