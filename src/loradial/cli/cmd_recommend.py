"""`loradial recommend`: a starting LoRA config with a reason per choice, and the ladder ahead."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from loradial.cli import options as opt
from loradial.cli.common import app, console, run


def _render(res) -> None:
    m = res.model
    data = ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in res.data.items())
    console.print(f"[bold]{m.get('name')}[/] - task {res.task}, {data}")
    table = Table(show_header=True, header_style="bold", box=None, padding=(0, 1))
    table.add_column("setting")
    table.add_column("value")
    table.add_column("why")
    rows = [("r", res.r), ("lora_alpha", res.lora_alpha), ("use_rslora", res.use_rslora), ("use_dora", res.use_dora),
            ("target_modules", res.target_modules), ("learning_rate", res.learning_rate), ("lora_dropout", res.lora_dropout),
            ("micro_batch_size", res.micro_batch_size), ("gradient_accumulation_steps", res.gradient_accumulation_steps),
            ("gradient_checkpointing", res.gradient_checkpointing), ("quant", res.quant)]
    for key, value in rows:
        if value is None and key not in res.reasons:
            continue
        table.add_row(key, "-" if value is None else str(value), res.reasons.get(key, ""))
    console.print(table)
    console.print(f"scale s = {res.scale:g}; {res.trainable_params:,} trainable parameters")
    for case, steps in res.ladder.items():
        if not steps:
            continue
        parts = []
        for s in steps:
            what = s.get("command") or ", ".join(f"{k}={v}" for k, v in (s.get("config") or {}).items())
            parts.append(f"{s['action']} ({what})" if what else s["action"])
        label = {"underfits": "if it underfits", "overfits": "if it overfits", "unstable": "if it is unstable"}.get(case, case)
        console.print(f"{label}: " + " -> ".join(parts), soft_wrap=True)
    for w in res.warnings:
        console.print(f"[yellow]warning:[/] {w}", soft_wrap=True)
    if res.export:
        exp = res.export
        if exp.get("path"):
            console.print(f"wrote {exp['format']} config to {exp['path']}")
        else:
            sys.stdout.write(exp["text"])
            sys.stdout.flush()
        for w in exp.get("warnings", []):
            console.print(f"[yellow]warning ({exp['format']}):[/] {w}", soft_wrap=True)


@app.command("recommend")
def recommend_cmd(
    model: str = typer.Option(..., "--model", "-m", help="Local dir with config.json, a bundled name (loradial models) or a Hub id."),
    task: str = typer.Option(..., "--task", "-t", help="style | standard | domain-shift | full-parity"),
    examples: Optional[int] = typer.Option(None, "--examples", help="Number of training examples."),
    tokens: Optional[int] = typer.Option(None, "--tokens", help="Number of training tokens (instead of --examples)."),
    gpu_memory: Optional[float] = typer.Option(None, "--gpu-memory", help="GiB of GPU memory: sizes batch, checkpointing, DoRA."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Training sequence length (default 2048)."),
    lr_rank_exponent: Optional[float] = typer.Option(None, "--lr-rank-exponent", help="lr * (r/16)^-e (default 0: same LR at every rank; 0.84 is folklore)."),
    rules: Optional[Path] = typer.Option(None, "--rules", help="YAML file overriding the shipped rules (see loradial.advice.rules)."),
    export: Optional[str] = typer.Option(None, "--export", help="Also write it as peft | trl | axolotl | llamafactory | unsloth | torchtune."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="File for --export (default: print it)."),
    as_json: opt.Json = False,
) -> None:
    """Recommend r, alpha, rsLoRA/DoRA, targets, LR, dropout and a batch that fits - each with its reason and source.

    Example: loradial recommend --model llama-3.1-8b --task standard --examples 20000 --gpu-memory 24 --export axolotl
    """
    from loradial.advice.recommendation import recommend

    run(lambda: recommend(model, task, examples, tokens, gpu_memory=gpu_memory, seq_len=seq_len,
                          lr_rank_exponent=lr_rank_exponent, rules_file=rules, export=export, export_out=out),
        as_json, _render)
