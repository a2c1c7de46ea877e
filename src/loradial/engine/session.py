"""A training run on disk: load the base model and data, drive the Engine, checkpoint, resume, save.

``open_session`` builds (or resumes) a run in an output directory; ``TrainSession.run`` trains with
a progress bar, evaluating and checkpointing on the way; ``TrainSession.finish`` writes every
adapter as a PEFT adapter under ``out/adapters/<name>/`` and returns the result. ``train_many``
is the three in a row. The sweep builds on the session: run to a step, ``engine.evaluate()``,
``engine.drop(...)``, run on.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from loradial.errors import LoradialError, runtime_failure
from loradial.io import atomic_write_json, check_out_not_overlapping, check_output_dir
from loradial.result import Result
from loradial.engine.checkpoint import load_checkpoint, save_checkpoint, truncate_metrics
from loradial.engine.config import AdapterConfig
from loradial.models.load import load_model
from loradial.settings import DEFAULT

_OUR_FILES = ("metrics.jsonl", "checkpoint", "adapters", "train_result.json")


@dataclasses.dataclass
class TrainResult(Result):
    """What a run produced: one PEFT adapter per config, with its final train and eval loss."""

    out: str
    adapters: list[dict[str, Any]]
    steps: int
    total_steps: int
    tokens: int
    elapsed_s: float
    tokens_per_s: float
    device: str
    metrics: str
    resumed_from_step: int | None = None


def _examples(data, tokenizer, max_len, eval_data, eval_fraction, packing, seed):
    """Tokenized (train, eval): pre-tokenized lists pass through; paths and records go through loradial.data."""
    from loradial.data import load_dataset

    def tokenized(x) -> bool:
        return isinstance(x, list) and bool(x) and isinstance(x[0], dict) and "input_ids" in x[0]

    if tokenized(data):
        if eval_fraction:
            raise LoradialError("an eval fraction needs raw records, not tokenized examples", "pass eval_data")
        return data, (eval_data if tokenized(eval_data) else [])
    if tokenizer is None:
        raise LoradialError("raw data needs a tokenizer", "pass tokenizer= (or a model path, whose tokenizer is used)")
    return load_dataset(data, tokenizer, max_len, eval_data=eval_data, eval_fraction=eval_fraction, packing=packing, seed=seed)


def _remove_previous_run(out: Path) -> None:
    """Delete the files a previous run wrote in ``out`` (and nothing else)."""
    for name in _OUR_FILES:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


class TrainSession:
    def __init__(self, engine, out: Path, run: dict[str, Any], resumed_from: int | None):
        self.engine, self.out, self.run_config, self.resumed_from = engine, out, run, resumed_from

    def checkpoint(self, _engine=None) -> Path:
        return save_checkpoint(self.engine, self.out, self.run_config)

    def run(self, until: int | None = None, progress: bool = False) -> None:
        e, r = self.engine, self.run_config
        kw = dict(eval_every=r.get("eval_every"), save_every=r.get("save_every"), on_save=self.checkpoint)
        if not progress:
            e.run(until, **kw)
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        from loradial.console import console

        with Progress(TextColumn("[bold]train[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                      TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False) as bar:
            task = bar.add_task("train", total=e.total_steps, completed=e.step, info="")

            def on_step(eng) -> None:
                last = [h for h in eng.history[-len(eng.configs):] if h.get("loss") is not None]
                loss = f"loss {min(h['loss'] for h in last):.4f}" if last else ""
                tps = eng.tokens_seen / max(eng.elapsed(), 1e-9)
                bar.update(task, completed=eng.step, info=f"{loss}  {tps:,.0f} tok/s  K={len(eng.active)}")

            e.run(until, on_step=on_step, **kw)
            bar.update(task, completed=e.step)

    def finish(self) -> TrainResult:
        """Final eval, final checkpoint (with --save-every), every adapter saved in PEFT format."""
        from loradial.adapters.card import write_model_card
        from loradial.adapters.format import save_adapter

        e = self.engine
        e.flush()
        evals = e.evaluate() if e.eval_examples and e.active else {}
        if self.run_config.get("save_every"):
            self.checkpoint()
        last_eval = {}
        for h in e.history:
            if "eval_loss" in h:
                last_eval[h["adapter"]] = h["eval_loss"]
        last_eval.update(evals)
        rows = []
        for name, cfg in e.configs.items():
            path = save_adapter(e.export_adapter(name), self.out / "adapters" / name, overwrite=True)
            losses = [h["loss"] for h in e.history if h["adapter"] == name and "loss" in h]
            rows.append({"name": name, "path": str(path), "status": "done" if e.status[name] == "training" else e.status[name],
                         "r": cfg.spec.r, "lora_alpha": cfg.spec.lora_alpha, "use_rslora": cfg.spec.use_rslora,
                         "use_dora": cfg.spec.use_dora, "lr": cfg.lr, "final_loss": losses[-1] if losses else None,
                         "eval_loss": last_eval.get(name), "diverged_at": e.frozen_at.get(name)})
            write_model_card(path, {**rows[-1], "learning_rate": cfg.lr, "steps": e.step,
                                    **{k: self.run_config.get(k) for k in ("batch_size", "grad_accum", "max_len")}})
        elapsed = e.elapsed()
        res = TrainResult(str(self.out), rows, e.step, e.total_steps, e.tokens_seen, round(elapsed, 3),
                          round(e.tokens_seen / max(elapsed, 1e-9), 1), str(e.device), str(self.out / "metrics.jsonl"),
                          self.resumed_from)
        atomic_write_json(self.out / "train_result.json", res.to_dict())
        return res


def open_session(model, data, adapters: list[AdapterConfig] | None, *, out, tokenizer=None,
                 batch_size: int = DEFAULT.batch_size, steps: int | None = None, epochs: float | None = None,
                 max_len: int = DEFAULT.max_len, eval_data=None, eval_fraction: float = 0.0,
                 packing: bool = DEFAULT.packing, seed: int = DEFAULT.seed, save_every: int | None = None,
                 eval_every: int | None = None, resume: bool = False,
                 gradient_checkpointing: bool = DEFAULT.gradient_checkpointing, dtype: str = DEFAULT.dtype,
                 load_in_4bit: bool = DEFAULT.load_in_4bit, grad_accum: int = DEFAULT.grad_accum,
                 overwrite: bool = False, device: str | None = None,
                 trust_remote_code: bool = DEFAULT.trust_remote_code, cuda_graphs: bool = DEFAULT.cuda_graphs,
                 **engine_kw) -> TrainSession:
    """Build a run in ``out`` (or, with ``resume=True``, continue the one checkpointed there).

    Everything (settings, data, model, targets) is checked before ``out`` is touched: with
    ``overwrite=True`` the previous run's files are removed only once the new session is built, so
    bad input leaves the old run intact. ``trust_remote_code`` reaches ``from_pretrained`` (off by default).
    """
    from loradial.engine.trainer import Engine

    out = Path(out).expanduser()
    meta = tensors = None
    if resume:
        tensors, meta = load_checkpoint(out)
        run = meta["run"]
        adapters = [AdapterConfig.from_dict(d) for d in meta["adapters"]]
        model = model if model is not None else run["model"]
        data = data if data is not None else run["data"]
        if model is None or data is None:
            raise LoradialError("this run was started from in-memory objects", "pass the same model and data again to resume")
        eval_data = eval_data if eval_data is not None else run.get("eval_data")
        # the saved settings win over the arguments: a resumed run is the same run
        batch_size, steps, epochs, max_len = run["batch_size"], run["steps"], run["epochs"], run["max_len"]
        eval_fraction, packing, seed, save_every = run["eval_fraction"], run["packing"], run["seed"], run["save_every"]
        eval_every, gradient_checkpointing = run["eval_every"], run["gradient_checkpointing"]
        dtype, load_in_4bit, grad_accum = run["dtype"], run["load_in_4bit"], run["grad_accum"]
        trust_remote_code = trust_remote_code or bool(run.get("trust_remote_code"))  # asked for at the start
        cuda_graphs = bool(run.get("cuda_graphs", False))
    else:
        if not adapters:
            raise LoradialError("no adapter configuration given")
        check_output_dir(out, overwrite)  # refuses a file or a non-empty dir without --overwrite; deletes nothing
        check_out_not_overlapping(out, [("base model", model if isinstance(model, (str, Path)) else None),
                                        ("training data", data), ("eval data", eval_data)])
        if save_every is not None and save_every < 1:
            raise LoradialError(f"--save-every must be >= 1, got {save_every}", "e.g. --save-every 100")
        if isinstance(data, (str, Path)):
            from loradial.data import load_records

            load_records(data)  # fail on bad data before loading a model
    if cuda_graphs:
        _check_graphs_early(device)
    run = {"model": model if isinstance(model, str) else None, "data": str(data) if isinstance(data, (str, Path)) else None,
           "eval_data": str(eval_data) if isinstance(eval_data, (str, Path)) else None, "batch_size": batch_size,
           "steps": steps, "epochs": epochs, "max_len": max_len, "eval_fraction": eval_fraction, "packing": packing,
           "seed": seed, "save_every": save_every, "eval_every": eval_every, "gradient_checkpointing": gradient_checkpointing,
           "dtype": dtype, "load_in_4bit": load_in_4bit, "grad_accum": grad_accum,
           "trust_remote_code": bool(trust_remote_code), "cuda_graphs": bool(cuda_graphs)}
    name = model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", None)
    if isinstance(model, str):
        model, loaded_tok = load_model(model, dtype=dtype, load_in_4bit=load_in_4bit, device=device,
                                       trust_remote_code=trust_remote_code)
        tokenizer = tokenizer or loaded_tok
    train, ev = _examples(data, tokenizer, max_len, eval_data, eval_fraction, packing, seed)
    pad = None if tokenizer is None else (tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    engine = Engine(model, adapters, train, batch_size=batch_size, steps=steps, epochs=epochs, eval=ev,
                    grad_accum=grad_accum, pad_token_id=pad, gradient_checkpointing=gradient_checkpointing, seed=seed,
                    metrics_path=out / "metrics.jsonl", base_model_name=name, cuda_graphs=cuda_graphs, **engine_kw)
    # the session is fully built (the Engine writes nothing until it steps): only now replace the old run
    if meta is None and overwrite and out.is_dir():
        _remove_previous_run(out)
    out.mkdir(parents=True, exist_ok=True)
    resumed = None
    if meta is None:
        import torch

        torch.manual_seed(seed)  # dropout masks: a run is a function of its seed (resume restores the RNG)
    else:
        engine.load_state_dict(tensors, meta)
        truncate_metrics(out / "metrics.jsonl", engine.step)
        resumed = engine.step
    return TrainSession(engine, out, run, resumed)


def _check_graphs_early(device: str | None) -> None:
    """--cuda-graphs on a machine without CUDA (or with --device cpu): refuse before loading anything."""
    import torch

    if (device is not None and not str(device).startswith("cuda")) or not torch.cuda.is_available():
        raise LoradialError("--cuda-graphs needs a CUDA GPU; none is in use here",
                            "drop --cuda-graphs (it only removes launch overhead on a GPU)")


def train_many(model, data, adapters: list[AdapterConfig] | None, *, out, progress: bool = False, **kw) -> TrainResult:
    """Train K adapter configs at once on one frozen base; every adapter saved under ``out/adapters/<name>``.

    ``model``: a model directory, a Hub id or a loaded ``PreTrainedModel`` (then pass ``tokenizer=``
    unless ``data`` is already tokenized). ``data``: a data file, a list of records, or a list of
    tokenized examples. With ``resume=True`` the run checkpointed in ``out`` continues (``model``,
    ``data`` and ``adapters`` may then be None: the saved settings are used).
    """
    session = open_session(model, data, adapters, out=out, **kw)
    try:
        session.run(progress=progress)
    except KeyboardInterrupt:
        raise
    except RuntimeError as e:
        if "out of memory" in str(e).lower():
            raise runtime_failure(f"out of GPU memory with {len(session.engine.active)} adapters x batch {kw.get('batch_size', 8)}",
                                  "lower --batch-size or --max-len, or add --gradient-checkpointing") from None
        raise
    return session.finish()
