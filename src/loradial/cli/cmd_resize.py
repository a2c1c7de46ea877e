"""`loradial resize`: best rank-k approximation of every module's ΔW."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from loradial.cli import options as opt
from loradial.cli.common import app, console, run, short_types


@app.command("resize")
def resize_cmd(
    adapter: opt.AdapterArg,
    out: Path = typer.Option(..., "--out", help="Directory for the resized adapter (written atomically)."),
    rank: Optional[int] = typer.Option(None, "--rank", help="Every module to rank min(K, r)."),
    energy: Optional[float] = typer.Option(None, "--energy", help="Per module, the smallest rank keeping this fraction of Σσ²."),
    budget: Optional[int] = typer.Option(None, "--budget", help="Total LoRA parameters; ranks allocated to keep the most energy."),
    overwrite: opt.Overwrite = False,
    allow_pickle: opt.AllowPickle = False,
    as_json: opt.Json = False,
) -> None:
    """Make an adapter smaller: each module's ΔW becomes its best rank-k approximation (exact SVD of
    the factors), with rank_pattern / alpha_pattern written so PEFT rebuilds exactly that ΔW.

    Example: loradial resize ./my-adapter --rank 8 --out ./my-adapter-r8
    """
    from loradial.adapters import surgery

    def render(res: surgery.ResizeResult) -> None:
        t = Table(title=f"resized ({res.mode}) → {res.out}")
        for c in ("module type", "ranks", "retained energy", "params before", "params after"):
            t.add_column(c, justify="left" if c == "module type" else "right")
        short = short_types(list(res.per_type))
        for name, g in res.per_type.items():
            ranks = str(g["min_rank"]) if g["min_rank"] == g["max_rank"] else f"{g['min_rank']}–{g['max_rank']}"
            t.add_row(short[name], ranks, f"{g['retained_energy']:.2%}", f"{g['params_before']:,}", f"{g['params_after']:,}")
        console.print(t)
        console.print(f"overall: {res.retained_energy:.2%} of ΔW energy kept, {res.params_before:,} → {res.params_after:,} "
                      f"parameters" + (" [yellow](approximate: DoRA)[/]" if res.approximate else ""))
        for n in res.notes:
            console.print(f"[dim]note: {n}[/]")

    res = run(lambda: surgery.resize(adapter, out, rank=rank, energy=energy, budget=budget, overwrite=overwrite,
                                     allow_pickle=allow_pickle), as_json, render)
    for w in res.warnings:  # on stderr with --json too
        console.print(f"[yellow]warning:[/] {w}", soft_wrap=True)
