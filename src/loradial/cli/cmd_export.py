"""`loradial export`: a finished sweep's best config in another trainer's own key names."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from loradial.cli import options as opt
from loradial.cli.common import app, console, run


def show_export(result, as_json: bool = False) -> None:
    """Print an export: the document on stdout (unless written to a file), warnings on stderr."""
    if result.path:
        console.print(f"wrote {result.format} config to {result.path}")
    elif not as_json:
        sys.stdout.write(result.text)
        sys.stdout.flush()
    for w in result.warnings:
        console.print(f"[yellow]warning:[/] {w}", soft_wrap=True, highlight=False)


@app.command("export")
def export_cmd(
    sweep_dir: Path = typer.Argument(..., help="A finished `loradial sweep` directory (or its results.json)."),
    format: str = typer.Option(..., "--format", "-f", help="peft | trl | axolotl | llamafactory | unsloth | torchtune"),
    best: bool = typer.Option(True, "--best/--no-best", help="Export the sweep's best config (the default)."),
    config: Optional[str] = typer.Option(None, "--config", help="Export this config (by name) instead of the best."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write to this file (default: print it)."),
    as_json: opt.Json = False,
) -> None:
    """Write a sweep's best config in a trainer's own keys (alpha always explicit; what a format cannot express is a warning).

    Example: loradial export runs/sweep1 --best --format axolotl --out lora.yaml
    """
    from loradial.errors import LoradialError
    from loradial.advice.export import export_sweep

    def call():
        if not best and config is None:
            raise LoradialError("nothing to export: --no-best without --config NAME", "pass --config NAME or --best")
        return export_sweep(sweep_dir, format, out=out, name=config)

    run(call, as_json, show_export)
