"""`loradial alpha-sweep`: eval loss of base + adapter at several strengths, loading once."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from loradial.cli import options as opt
from loradial.settings import DEFAULT, EVAL
from loradial.cli.common import app, console, run, split_list


@app.command("alpha-sweep")
def alpha_sweep_cmd(
    adapter: opt.AdapterArg,
    model: Path = typer.Option(..., "--model", help="Base model: a local directory (weights and tokenizer) or a Hub id."),
    data: Path = typer.Option(..., "--data", help="Evaluation data (jsonl/json/csv/parquet/txt)."),
    scales: str = typer.Option("0,0.25,0.5,0.75,1,1.25,1.5", "--scales", help="Comma-separated multipliers of the adapter's scale."),
    max_len: opt.EvalMaxLen = EVAL.max_len,
    batch_size: opt.EvalBatchSize = EVAL.batch_size,
    max_examples: opt.MaxExamples = None,
    allow_pickle: opt.AllowPickle = False,
    trust_remote_code: opt.TrustRemoteCode = DEFAULT.trust_remote_code,
    as_json: opt.Json = False,
) -> None:
    """Which adapter strength is best? Eval loss and token accuracy of base + c·adapter for each c
    (c multiplies every module's scale; 0 is the base model), with one model load.

    Example: loradial alpha-sweep ./my-adapter --model ./Llama-3.2-1B --data eval.jsonl --scales 0,0.5,1,1.5
    """
    from loradial.adapters import evaluate

    def render(res: evaluate.AlphaSweepResult) -> None:
        t = Table(title=f"{res.n_examples} examples, {res.n_tokens:,} label tokens")
        for c in ("scale", "eval loss", "token accuracy", ""):
            t.add_column(c, justify="right")
        lo, hi = min(res.losses), max(res.losses)
        for c, l, a in zip(res.scales, res.losses, res.accuracies):
            bar = "█" * (1 + int(20 * (hi - l) / (hi - lo))) if hi > lo else ""
            t.add_row(f"{c:g}", f"{l:.4f}", f"{a:.2%}", bar + (" ← best" if c == res.best_scale else ""))
        console.print(t)
        line = f"best scale {res.best_scale:g}: loss {res.best_loss:.4f}"
        if res.loss_at_1 is not None:
            line += f" (at 1: {res.loss_at_1:.4f})"
        console.print(line)
        for n in res.notes:
            console.print(f"[dim]note: {n}[/]")

    run(lambda: evaluate.alpha_sweep(adapter, model, data, split_list(scales, float, "scale"), max_len=max_len, batch_size=batch_size,
                                     max_examples=max_examples, allow_pickle=allow_pickle,
                                     trust_remote_code=trust_remote_code), as_json, render)
