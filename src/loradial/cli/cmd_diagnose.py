"""`loradial diagnose`: verdict, evidence and next config from a training log."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from loradial.cli import options as opt
from loradial.cli.common import app, console, run

_STYLE = {"healthy": "green", "too_few_steps": "yellow", "underfitting": "yellow",
          "overfitting": "red", "memorizing": "red", "unstable": "bold red"}


def _render(result) -> None:
    console.print(f"[bold]{result.log}[/] ({result.format})")
    for d in result.adapters:
        style = _STYLE.get(d.verdict, "")
        head = f"[{style}]{d.verdict}[/]" + (f"  (also: {', '.join(d.flags[1:])})" if len(d.flags) > 1 else "")
        name = f"{d.adapter}: " if len(result.adapters) > 1 or d.adapter != "default" else ""
        console.print(f"\n{name}{head}")
        for line in d.summary:
            console.print(f"  - {line}", highlight=False)
        if d.next:
            table = Table(show_header=True, header_style="bold", box=None, padding=(0, 1))
            for col in ("next", "config / command", "why"):
                table.add_column(col)
            for step in d.next:
                what = step.get("command") or ", ".join(f"{k}={v}" for k, v in (step.get("config") or {}).items())
                table.add_row(step["action"], what, step["why"])
            console.print(table)
    if len(result.adapters) > 1:
        console.print(f"\nbest adapter: [bold]{result.adapter}[/] ({result.verdict})")


@app.command("diagnose")
def diagnose_cmd(
    log: Path = typer.Argument(..., help="trainer_state.json, metrics.jsonl, metrics.csv, torchtune log_*.txt, a CSV/JSONL with step, loss, eval_loss, or a run directory."),
    config: Optional[Path] = typer.Option(None, "--config", help="The run's PEFT adapter_config.json (default: the one next to the log), for concrete next configs."),
    rules: Optional[Path] = typer.Option(None, "--rules", help="YAML file overriding the shipped ladder (see loradial.advice.rules)."),
    as_json: opt.Json = False,
) -> None:
    """Say whether a run underfit, overfit, memorized, was unstable, too short or healthy - with the numbers - and what to try next.

    Example: loradial diagnose out/checkpoint-500/trainer_state.json
    """
    from loradial.advice.diagnosis import diagnose

    run(lambda: diagnose(log, config=config, rules_file=rules), as_json, _render)
