"""`loradial train`: train one LoRA adapter with the multi-adapter engine (K = 1)."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from loradial.errors import LoradialError
from loradial.cli import options as opt
from loradial.settings import DEFAULT
from loradial.cli.common import app, given_options, refuse_with_resume, console, run


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"


@app.command("train")
def train_cmd(
    ctx: typer.Context,
    model: opt.ModelAny = None,
    data: opt.Data = None,
    rank: Optional[int] = typer.Option(None, "--rank", "-r", help="LoRA rank r."),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="lora_alpha (written explicitly to adapter_config.json)."),
    rslora: bool = typer.Option(False, "--rslora", help="rsLoRA scaling alpha/sqrt(r)."),
    dora: bool = typer.Option(False, "--dora", help="DoRA (weight-decomposed LoRA)."),
    targets: str = typer.Option("all-linear", "--targets", help="all-linear | attention | mlp | q_proj,v_proj | re:<regex>."),
    lr: opt.Lr = DEFAULT.lr,
    steps: opt.Steps = None,
    epochs: opt.Epochs = None,
    batch_size: opt.BatchSize = DEFAULT.batch_size,
    out: opt.OutDir = None,
    eval_data: opt.EvalData = None,
    eval_fraction: opt.EvalFraction = 0.0,
    eval_every: opt.EvalEvery = None,
    max_len: opt.MaxLen = DEFAULT.max_len,
    packing: opt.Packing = DEFAULT.packing,
    dropout: opt.Dropout = DEFAULT.dropout,
    weight_decay: opt.WeightDecay = DEFAULT.weight_decay,
    schedule: opt.Schedule = DEFAULT.schedule,
    warmup_ratio: opt.WarmupRatio = DEFAULT.warmup_ratio,
    max_grad_norm: opt.MaxGradNorm = DEFAULT.max_grad_norm,
    grad_accum: opt.GradAccum = DEFAULT.grad_accum,
    seed: opt.Seed = DEFAULT.seed,
    save_every: Optional[int] = typer.Option(None, "--save-every", help="Checkpoint every N steps (resumable)."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue the run in this directory with its saved settings."),
    gradient_checkpointing: opt.GradientCheckpointing = DEFAULT.gradient_checkpointing,
    dtype: opt.Dtype = DEFAULT.dtype,
    load_in_4bit: opt.LoadIn4bit = DEFAULT.load_in_4bit,
    cuda_graphs: opt.CudaGraphs = DEFAULT.cuda_graphs,
    overwrite: opt.Overwrite = False,
    trust_remote_code: opt.TrustRemoteCode = DEFAULT.trust_remote_code,
    as_json: opt.Json = False,
) -> None:
    """Train one LoRA adapter (K = 1 of the multi-adapter engine) and save it in PEFT format.

    Example: loradial train --model ./my-model --data train.jsonl --rank 16 --alpha 32 --targets all-linear --lr 2e-4 --steps 500 --batch-size 8 --out runs/r16
    """
    from loradial import train

    ignored = given_options(ctx, ("resume", "as_json"))

    def call():
        if resume is not None:
            refuse_with_resume(ignored)
        if rank is not None and rank < 1:
            raise LoradialError(f"--rank must be a positive integer, got {rank}", "e.g. --rank 16")
        if alpha is not None and not alpha > 0:
            raise LoradialError(f"--alpha must be a positive number, got {alpha:g}", "e.g. --alpha 32 (alpha = 2r is common)")
        if resume is None:
            missing = [flag for flag, v in (("--model", model), ("--data", data), ("--rank", rank), ("--alpha", alpha),
                                            ("--out", out)) if v is None]
            if missing:
                raise LoradialError(f"missing {', '.join(missing)}", "or continue a run with --resume DIR")
        return train(model, data, rank=rank, alpha=alpha, use_rslora=rslora, use_dora=dora, targets=targets,
                     lr=lr, steps=steps, epochs=epochs, batch_size=batch_size, max_len=max_len, out=out,
                     eval_data=eval_data, eval_fraction=eval_fraction, dropout=dropout, seed=seed,
                     save_every=save_every, eval_every=eval_every, resume=resume,
                     gradient_checkpointing=gradient_checkpointing, dtype=dtype, load_in_4bit=load_in_4bit,
                     packing=packing, weight_decay=weight_decay, schedule=schedule, warmup_ratio=warmup_ratio,
                     max_grad_norm=max_grad_norm or None, grad_accum=grad_accum, overwrite=overwrite, progress=True,
                     trust_remote_code=trust_remote_code, cuda_graphs=cuda_graphs)

    def render(res) -> None:
        table = Table(title=f"trained {res.steps}/{res.total_steps} steps · {res.tokens_per_s:,.0f} tokens/s · {res.device}")
        for col in ("adapter", "status", "r", "alpha", "train loss", "eval loss", "saved to"):
            table.add_column(col)
        for a in res.adapters:
            table.add_row(a["name"], a["status"], str(a["r"]), f"{a['lora_alpha']:g}", _fmt(a["final_loss"]),
                          _fmt(a["eval_loss"]), a["path"])
        console.print(table)
        console.print(f"metrics: {res.metrics}")

    where = resume or out
    run(call, as_json, render, interrupted_hint=(
        f"continue from the last checkpoint with `loradial train --resume {where}`" if resume or save_every else
        "nothing was saved; rerun with --save-every N to make a run resumable"))
