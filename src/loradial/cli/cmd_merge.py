"""`loradial merge`: fold an adapter into its base model."""

from __future__ import annotations

from pathlib import Path

import typer

from loradial.cli import options as opt
from loradial.settings import DEFAULT
from loradial.cli.common import app, console, run


@app.command("merge")
def merge_cmd(
    adapter: opt.AdapterArg,
    model: Path = typer.Option(..., "--model", help="Base model: a local directory (safetensors) or a Hub id."),
    out: Path = typer.Option(..., "--out", help="Directory for the merged model (written atomically)."),
    max_shard_size: str = typer.Option("5GB", "--max-shard-size", help="Largest safetensors shard."),
    overwrite: opt.Overwrite = False,
    allow_pickle: opt.AllowPickle = False,
    trust_remote_code: opt.TrustRemoteCode = DEFAULT.trust_remote_code,
    as_json: opt.Json = False,
) -> None:
    """Merge the adapter (with its scaling; DoRA and lora_bias included) into the base weights and save
    the model (sharded safetensors, config, tokenizer), as PEFT's merge_and_unload would.

    Example: loradial merge ./my-adapter --model ./Llama-3.2-1B --out ./merged
    """
    from loradial.adapters import surgery

    def render(res: surgery.MergeResult) -> None:
        console.print(f"merged {res.n_modules} modules into {res.out} ({res.dtype}): {', '.join(res.files)}")
        for n in res.notes:
            console.print(f"[yellow]note:[/] {n}")

    run(lambda: surgery.merge(adapter, model, out, overwrite=overwrite, max_shard_size=max_shard_size,
                              allow_pickle=allow_pickle, trust_remote_code=trust_remote_code), as_json, render)
