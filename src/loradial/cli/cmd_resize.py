"""`loradial resize`: best rank-k approximation of every module's ΔW."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from loradial.cli import options as opt
from loradial.cli.common import app, console, run, short_types
from loradial.errors import LoradialError


@app.command("resize")
def resize_cmd(
    adapter: opt.AdapterArg,
    out: Path = typer.Option(..., "--out", help="Directory for the resized adapter (written atomically)."),
    rank: Optional[int] = typer.Option(None, "--rank", help="Every module to rank min(K, r)."),
    energy: Optional[float] = typer.Option(None, "--energy", help="Per module, the smallest rank keeping this fraction of Σσ²."),
    budget: Optional[int] = typer.Option(None, "--budget", help="Total LoRA parameters; ranks allocated to keep the most energy."),
    from_full: bool = typer.Option(False, "--from-full", help="The argument is a fully fine-tuned model: extract a LoRA adapter from W_ft − W_base (needs --base)."),
    base: Optional[Path] = typer.Option(None, "--base", help="With --from-full: the model it was fine-tuned from (local directory)."),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="With --from-full: lora_alpha of the extracted adapter (default: its rank, so the scale is 1)."),
    include_embeddings: bool = typer.Option(False, "--include-embeddings", help="With --from-full: also extract the embeddings and the output head."),
    device: Optional[str] = typer.Option(None, "--device", help="With --from-full: where the SVDs run (default: cuda if available, else cpu)."),
    svd_dtype: str = typer.Option("float64", "--svd-dtype", help="With --from-full: float64 or float32."),
    overwrite: opt.Overwrite = False,
    allow_pickle: opt.AllowPickle = False,
    as_json: opt.Json = False,
) -> None:
    """Make an adapter smaller: each module's ΔW becomes its best rank-k approximation (exact SVD of
    the factors), with rank_pattern / alpha_pattern written so PEFT rebuilds exactly that ΔW. With
    --from-full --base: a rank-k (or --energy) LoRA adapter extracted from a full fine-tune (truncated SVD
    of W_ft − W_base per module), written as a standard PEFT adapter.

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

    def call() -> surgery.ResizeResult:
        if not from_full:
            if base is not None or alpha is not None:
                raise LoradialError("--base and --alpha go with --from-full", "e.g. loradial resize FT --from-full --base BASE --rank 16 --out DIR")
            return surgery.resize(adapter, out, rank=rank, energy=energy, budget=budget, overwrite=overwrite,
                                  allow_pickle=allow_pickle)
        from loradial.adapters.extraction import resize_from_full

        if base is None:
            raise LoradialError("--from-full needs --base", "the model the full fine-tune started from, e.g. --base ./Llama-3.2-1B")
        if budget is not None:
            raise LoradialError("--budget does not go with --from-full", "give --rank K or --energy 0.9")
        return resize_from_full(adapter, base, out, rank=rank, energy=energy, alpha=alpha, include_embeddings=include_embeddings,
                                device=device, dtype=svd_dtype, overwrite=overwrite, progress=True)

    res = run(call, as_json, render)
    for w in res.warnings:  # on stderr with --json too
        console.print(f"[yellow]warning:[/] {w}", soft_wrap=True)
