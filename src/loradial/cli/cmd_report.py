"""`loradial report`: re-render the HTML report of a sweep, analysis or demo directory."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from loradial.cli import options as opt
from loradial.cli.common import app, console, run


@app.command("report")
def report_cmd(
    directory: Path = typer.Argument(..., help="A sweep directory (results.json, metrics.jsonl), an analysis directory "
                                               "(analysis.json), or a directory holding them one level down."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output HTML file (default: DIR/report.html)."),
    as_json: opt.Json = False,
) -> None:
    """Write one self-contained HTML report (inline SVG charts, no scripts, no network) from what DIR holds:
    sweep loss curves, eval loss against rank and the results table; adapter spectra, effective ranks and the
    recommended rank; the cost plan.

    Example: loradial report runs/sweep --out sweep-report.html
    """
    from loradial.reports.api import report

    def render(result) -> None:
        console.print(f"[bold green]report written:[/] {result.path}", soft_wrap=True)
        console.print(f"sections: {', '.join(result.sections)} · {result.charts} charts", soft_wrap=True)
        for note in result.notes:
            console.print(f"[yellow]note:[/] {note}", soft_wrap=True, markup=True, highlight=False)

    run(lambda: report(directory, out), as_json, render)
