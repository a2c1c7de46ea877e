"""`loradial rescale`: scale ΔW, set alpha, or switch LoRA ↔ rsLoRA scaling with identical outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from loradial.cli import options as opt
from loradial.cli.common import app, console, run


@app.command("rescale")
def rescale_cmd(
    adapter: opt.AdapterArg,
    out: Path = typer.Option(..., "--out", help="Directory for the rescaled adapter (written atomically)."),
    scale: Optional[float] = typer.Option(None, "--scale", help="Multiply every module's ΔW by this factor."),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="Set every module's lora_alpha to this value."),
    to: Optional[str] = typer.Option(None, "--to", help="'rslora' or 'lora': switch the scaling rule, outputs unchanged."),
    fold: bool = typer.Option(False, "--fold", help="Bake the factor into lora_B instead of editing alpha."),
    force: bool = typer.Option(False, "--force", help="Rescale a DoRA adapter although its output is not linear in s."),
    overwrite: opt.Overwrite = False,
    allow_pickle: opt.AllowPickle = False,
    as_json: opt.Json = False,
) -> None:
    """Make an adapter quieter or louder, or switch between LoRA and rsLoRA scaling, without retraining.

    Example: loradial rescale ./my-adapter --scale 0.5 --out ./my-adapter-half
    """
    from loradial.adapters import surgery

    def render(res: surgery.RescaleResult) -> None:
        fs = sorted(set(res.factors.values()))
        f = f"{fs[0]:g}" if len(fs) == 1 else f"{fs[0]:g}…{fs[-1]:g}"
        how = "lora_B" if res.fold else "alpha"
        rule = "rsLoRA" if res.use_rslora else "LoRA"
        console.print(f"wrote {res.out}: ΔW × {f} via {how}, {rule} scaling"
                      + (" (outputs identical)" if res.outputs_identical else ""))
        for n in res.notes:
            console.print(f"[dim]note: {n}[/]")

    run(lambda: surgery.rescale(adapter, out, scale=scale, alpha=alpha, to=to, fold=fold, force=force,
                                overwrite=overwrite, allow_pickle=allow_pickle), as_json, render)
