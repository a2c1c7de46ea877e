"""What every CLI verb shares: the typer app, error handling, ``--json`` output and the consoles.

Human output and progress go to stderr; stdout carries only the ``--json`` document.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable

import typer
from loradial.console import console
from loradial.errors import LoradialError

app = typer.Typer(
    name="loradial",
    help="Which LoRA rank and alpha? Exact costs, many adapters trained at once, and the spectrum of what you trained.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

def fail(err: LoradialError) -> None:
    """Print one line (plus the hint) on stderr and exit with the error's code."""
    console.print(f"[bold red]error:[/] {err.message}", markup=True, soft_wrap=True, highlight=False)
    if err.hint:
        console.print(f"[yellow]hint:[/] {err.hint}", soft_wrap=True, highlight=False)
    raise typer.Exit(err.exit_code)


def run(call: Callable[[], Any], as_json: bool, render: Callable[[Any], None] | None = None) -> Any:
    """Run an API call; print its ``to_dict()`` as JSON or hand it to ``render``; map errors to exits."""
    try:
        result = call()
    except LoradialError as err:
        fail(err)
    except KeyboardInterrupt:
        console.print("interrupted")
        raise typer.Exit(130)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
        sys.stdout.flush()
    elif render is not None:
        render(result)
    return result


def split_list(text: str | None, cast: Callable[[str], Any] = str, what: str = "value") -> list[Any]:
    """Parse '4,8,16' into [4, 8, 16], with a clean error naming the bad item."""
    if text is None:
        return []
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    out = []
    for item in items:
        try:
            out.append(cast(item))
        except (TypeError, ValueError):
            raise LoradialError(f"invalid {what} {item!r} in {text!r}", f"give a comma-separated list of {what}s") from None
    return out


def short_types(names: list[str]) -> dict[str, str]:
    """Table labels of module types: 'model.layers.*.self_attn.q_proj' -> 'self_attn.q_proj' when
    that stays unique (as ``loradial analyze`` names them), else the full names."""
    short = {n: n.rsplit("*.", 1)[-1] for n in names}
    return short if len(set(short.values())) == len(names) else {n: n for n in names}


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    """loradial: exact LoRA costs, multi-adapter sweeps, and the spectrum of trained adapters."""
    if version:
        from loradial import __version__

        typer.echo(__version__)
        raise typer.Exit(0)
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
