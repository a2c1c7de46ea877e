"""`loradial models`: list the bundled model configs."""

from __future__ import annotations

from rich.table import Table

from loradial.models import resolve as _models
from loradial.cli import options as opt
from loradial.cli.common import app, console, run


@app.command("models")
def models_cmd(as_json: opt.Json = False) -> None:
    """List the bundled model configs usable offline with --model.

    Example: loradial models
    """

    def render(result: _models.ModelList) -> None:
        table = Table(title="bundled models (use the name or the Hub id with --model)")
        for col in ("name", "hub id", "family", "size"):
            table.add_column(col)
        for m in result.models:
            table.add_row(m["name"], m.get("hub_id", ""), m.get("family", ""), m.get("params_note", ""))
        console.print(table)

    run(_models.list_models, as_json, render)
