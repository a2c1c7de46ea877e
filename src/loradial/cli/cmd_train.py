"""`loradial train`: train one LoRA adapter with the multi-adapter engine (K = 1)."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from loradial.errors import LoradialError
from loradial.cli.common import JSON_OPTION, app, console, run


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"


@app.command("train")
def train_cmd(
    model: Optional[str] = typer.Option(None, "--model", help="Model directory or Hub id (causal LM)."),
    data: Optional[str] = typer.Option(None, "--data", help="Training data: .jsonl/.json/.csv/.parquet/.txt (text, prompt+completion or messages)."),
    rank: Optional[int] = typer.Option(None, "--rank", "-r", help="LoRA rank r."),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="lora_alpha (written explicitly to adapter_config.json)."),
    rslora: bool = typer.Option(False, "--rslora", help="rsLoRA scaling alpha/sqrt(r)."),
    dora: bool = typer.Option(False, "--dora", help="DoRA (weight-decomposed LoRA)."),
    targets: str = typer.Option("all-linear", "--targets", help="all-linear | attention | mlp | q_proj,v_proj | re:<regex>."),
    lr: float = typer.Option(2e-4, "--lr", help="Peak learning rate (AdamW)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps (or --epochs)."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Passes over the data (or --steps)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Sequences per micro-batch."),
    out: Optional[str] = typer.Option(None, "--out", help="Output directory (adapters/, metrics.jsonl, checkpoint/)."),
    eval_data: Optional[str] = typer.Option(None, "--eval-data", help="Eval data file."),
    eval_fraction: float = typer.Option(0.0, "--eval-fraction", help="Hold out this fraction of the records for eval."),
    eval_every: Optional[int] = typer.Option(None, "--eval-every", help="Evaluate every N steps (and at the end)."),
    max_len: int = typer.Option(1024, "--max-len", help="Truncate (or pack) to this many tokens."),
    packing: bool = typer.Option(False, "--packing", help="Pack examples into blocks of --max-len tokens."),
    dropout: float = typer.Option(0.0, "--dropout", help="lora_dropout."),
    weight_decay: float = typer.Option(0.0, "--weight-decay"),
    schedule: str = typer.Option("cosine", "--schedule", help="cosine | linear | constant (after warmup)."),
    warmup_ratio: float = typer.Option(0.03, "--warmup-ratio", help="Warmup as a fraction of the steps."),
    max_grad_norm: float = typer.Option(1.0, "--max-grad-norm", help="Gradient clipping (0 = off)."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-batches per optimizer step."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data order, the eval split and the init."),
    save_every: Optional[int] = typer.Option(None, "--save-every", help="Checkpoint every N steps (resumable)."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue the run in this directory with its saved settings."),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing", help="Recompute activations (less memory)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto | bf16 | fp32 for the frozen base."),
    load_in_4bit: bool = typer.Option(False, "--load-in-4bit", help="QLoRA: 4-bit NF4 base (bitsandbytes, CUDA)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a previous run in --out."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run the model repository's own Python code (only for models you trust)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Train one LoRA adapter (K = 1 of the multi-adapter engine) and save it in PEFT format.

    Example: loradial train --model ./my-model --data train.jsonl --rank 16 --alpha 32 --targets all-linear --lr 2e-4 --steps 500 --batch-size 8 --out runs/r16
    """
    from loradial import train

    def call():
        if resume is None:
            missing = [flag for flag, v in (("--model", model), ("--data", data), ("--rank", rank), ("--alpha", alpha),
                                            ("--out", out)) if v is None]
            if missing:
                raise LoradialError(f"missing {', '.join(missing)}", "or continue a run with --resume DIR")
        return train(model, data, rank=rank or 8, alpha=alpha or 16, use_rslora=rslora, use_dora=dora, targets=targets,
                     lr=lr, steps=steps, epochs=epochs, batch_size=batch_size, max_len=max_len, out=out,
                     eval_data=eval_data, eval_fraction=eval_fraction, dropout=dropout, seed=seed,
                     save_every=save_every, eval_every=eval_every, resume=resume,
                     gradient_checkpointing=gradient_checkpointing, dtype=dtype, load_in_4bit=load_in_4bit,
                     packing=packing, weight_decay=weight_decay, schedule=schedule, warmup_ratio=warmup_ratio,
                     max_grad_norm=max_grad_norm or None, grad_accum=grad_accum, overwrite=overwrite, progress=True,
                     trust_remote_code=trust_remote_code)

    def render(res) -> None:
        table = Table(title=f"trained {res.steps}/{res.total_steps} steps · {res.tokens_per_s:,.0f} tokens/s · {res.device}")
        for col in ("adapter", "status", "r", "alpha", "train loss", "eval loss", "saved to"):
            table.add_column(col)
        for a in res.adapters:
            table.add_row(a["name"], a["status"], str(a["r"]), f"{a['lora_alpha']:g}", _fmt(a["final_loss"]),
                          _fmt(a["eval_loss"]), a["path"])
        console.print(table)
        console.print(f"metrics: {res.metrics}")

    run(call, as_json, render)
