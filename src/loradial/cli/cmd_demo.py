"""`loradial demo`: plan -> sweep -> analyze -> alpha-sweep -> report on the bundled model, offline, on a CPU."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from loradial.cli import options as opt
from loradial.cli.common import app, console, run


def render(res) -> None:
    t = Table(title=f"eval loss after {res.steps} steps (base model: {res.base_eval_loss:.4f})")
    for col in ("config", "r", "alpha", "params", "eval loss", "vs base"):
        t.add_column(col, justify="left" if col == "config" else "right")
    for c in sorted(res.configs, key=lambda c: (c["r"], c["lora_alpha"])):
        loss = c["best_eval_loss"]
        mark = "[bold green]* [/]" if c["name"] == res.best else ""
        t.add_row(mark + c["name"], str(c["r"]), f"{c['lora_alpha']:g}", f"{c['trainable_params']:,}",
                  "-" if loss is None else f"{loss:.4f}", "-" if loss is None else f"{loss - res.base_eval_loss:+.4f}")
    console.print(t)
    console.print(f"best: [bold]{res.best}[/]; spectrum-recommended rank {res.recommended_rank}; "
                  f"best adapter scale {res.best_scale:g}", soft_wrap=True)
    for n in res.notes:
        console.print(f"[yellow]note:[/] {n}", soft_wrap=True)
    console.print(f"done in {res.wall_seconds:.0f} s; outputs in {res.out}", soft_wrap=True)
    console.print(f"[bold green]report:[/] {res.report}", soft_wrap=True)


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("loradial-demo"), "--out", "-o", help="Output directory (new, empty, or a previous demo's, which is replaced)."),
    steps: opt.Steps = None,
    threads: int = typer.Option(1, "--threads", help="torch CPU threads (1 is fastest on a busy machine)."),
    as_json: opt.Json = False,
) -> None:
    """The whole loop on the bundled 4M-parameter model and a domain-shift dataset, offline on a CPU in a few
    minutes: cost plan, a sweep of 4 ranks x 2 alphas trained at once, the best adapter's spectrum, its best
    strength, and one HTML report.

    Example: loradial demo --out loradial-demo
    """
    from loradial.flows.demo import demo

    run(lambda: demo(out, steps=steps, threads=threads, progress=True), as_json, render)
