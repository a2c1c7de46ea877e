"""What every CLI verb shares: the typer app, error handling, ``--json`` output and the consoles.

Human output and progress go to stderr; stdout carries only the ``--json`` document.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable

import typer
from rich.markup import escape

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

def fail(err: LoradialError, verb: str | None = None) -> None:
    """Print one line (plus the hint) on stderr and exit with the error's code. Bad input always gets a
    hint: where the error brought none, the verb's --help."""
    console.print(f"[bold red]error:[/] {escape(err.message)}", markup=True, soft_wrap=True, highlight=False)
    hint = err.hint
    if not hint and err.exit_code == 2:
        hint = f"see `loradial {verb} --help`" if verb else "see `loradial --help`"
    if hint:
        console.print(f"[yellow]hint:[/] {escape(hint)}", soft_wrap=True, highlight=False)
    raise typer.Exit(err.exit_code)


def run(call: Callable[[], Any], as_json: bool, render: Callable[[Any], None] | None = None,
        interrupted_hint: str | None = None) -> Any:
    """Run an API call; print its ``to_dict()`` as JSON or hand it to ``render``; map errors to exits.

    The one error boundary of the CLI: whatever fails, the user sees one line and a hint, never a
    traceback (``LORADIAL_DEBUG=1`` re-raises unexpected errors). See ``boundary_error``."""
    caller = sys._getframe(1).f_globals.get("__name__", "")  # loradial.cli.cmd_<verb>
    verb = caller.rpartition(".cmd_")[2].replace("_", "-") if ".cmd_" in caller else None
    try:
        result = call()
        if as_json:
            sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
            sys.stdout.flush()
        elif render is not None:
            render(result)
    except LoradialError as err:
        fail(err, verb)
    except KeyboardInterrupt:
        fail(LoradialError("interrupted", interrupted_hint or "nothing half-written was published; run the command again",
                           exit_code=130), verb)
    except Exception as e:  # noqa: BLE001 - the boundary: one line and a hint, never a traceback
        if os.environ.get("LORADIAL_DEBUG"):
            raise
        fail(boundary_error(e), verb)
    return result


_OOM = ("out of memory", "can't allocate memory", "cannot allocate memory", "defaultcpuallocator")


def boundary_error(e: BaseException) -> LoradialError:
    """An exception no verb turned into a LoradialError, as one: OSError by errno (exit 2 for a bad
    path, 1 for a full, read-only or forbidden disk); a corrupt safetensors, JSON or YAML input
    (exit 2); out of memory (exit 1, with what to lower); anything else an internal error (exit 1)."""
    from loradial.io import os_error, wrapped_os_error

    if isinstance(e, OSError):
        return os_error(e)
    inner = wrapped_os_error(e)
    if type(e).__name__ == "SafetensorError":
        if isinstance(inner, OSError):
            return os_error(inner)
        return LoradialError(f"a safetensors file is truncated or corrupt ({str(e).splitlines()[0][:160]})",
                             "copy or save the model/adapter again (its .safetensors file is damaged)")
    if isinstance(e, (json.JSONDecodeError, UnicodeDecodeError)):
        return LoradialError(f"an input file is not valid {'JSON' if isinstance(e, json.JSONDecodeError) else 'UTF-8'}: "
                             f"{str(e)[:160]}", "fix or regenerate the file")
    if type(e).__module__.startswith("yaml") and type(e).__name__.endswith("Error"):
        return LoradialError(f"an input file is not valid YAML: {str(e).splitlines()[0][:160]}", "fix the YAML file")
    text = str(e).lower()
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or any(s in text for s in _OOM):
        return LoradialError(f"out of memory ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})",
                             "lower --batch-size, --max-len or the rank (or add --gradient-checkpointing; a sweep: "
                             "--pack-size or --gpu-memory)", exit_code=1)
    first = str(e).splitlines()[0][:200] if str(e) else ""
    return LoradialError(f"internal error: {type(e).__name__}" + (f": {first}" if first else ""),
                         "this is a bug in loradial: please report it with the command line "
                         "(LORADIAL_DEBUG=1 prints the traceback)", exit_code=1)


def given_options(ctx: typer.Context, allowed: tuple[str, ...]) -> list[str]:
    """The options of the running command given on its command line, but those ``allowed``."""
    def source(name: str) -> str:  # typer ships its own click: compare the enum by name
        return getattr(ctx.get_parameter_source(name), "name", "")

    return [p.opts[0] for p in ctx.command.params if p.name not in allowed and source(p.name) == "COMMANDLINE"]


def refuse_with_resume(given: list[str]) -> None:
    """With --resume a run's settings come from its directory: options that would be silently ignored
    are an error (exit 2) that names them."""
    if given:
        names = ", ".join(given)
        raise LoradialError(f"--resume continues with the settings saved in the run's directory; {names} would be ignored",
                            f"drop {names}, or start a new run with another --out")


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
