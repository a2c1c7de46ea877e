"""`loradial tune`: the best rank, alpha and learning rate on your data, within a compute budget."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from loradial.cli import options as opt
from loradial.cli.common import app, given_options, refuse_with_resume, console, run, split_list
from loradial.errors import LoradialError
from loradial.settings import MAX_NEW_TOKENS, DEFAULT, SweepSettings


def render(res) -> None:
    table = Table(title=f"tune {res.out}: {res.adapter_steps_used:,} adapter-steps "
                        f"({100 * res.adapter_steps_used / res.adapter_steps_grid:.0f} % of the exhaustive grid)")
    for col in ("stage", "configs", "steps", "outcome"):
        table.add_column(col)
    for st in res.stages[1:]:
        steps = f"{st['steps'][0]} → {st['steps'][1]}"
        outcome = (f"{len(st.get('kept', []))} kept, {len(st.get('stopped', []))} stopped" if "kept" in st
                   else st.get("from", ""))
        table.add_row(st["stage"], str(len(st["configs"])), steps, outcome)
    console.print(table)
    b = res.best_config
    console.print(f"best: [bold]{b['name']}[/] (r={b['r']}, lora_alpha={b['lora_alpha']:g}, "
                  f"{'rsLoRA' if b['use_rslora'] else 'LoRA'}, lr={b['learning_rate']:g}) "
                  f"eval loss {res.best_eval_loss:.4f}" + (f" (base {res.base_eval_loss:.4f})" if res.base_eval_loss else ""))
    for line in res.why:
        console.print(f"  - {line}", soft_wrap=True)
    console.print(f"adapter: {res.best_adapter}\nexports: {res.out}/exports/  report: {res.report or '-'}  "
                  f"numbers: {res.out}/tune.json")


@app.command("tune")
def tune_cmd(
    ctx: typer.Context,
    model: opt.ModelDir = None,
    data: opt.Data = None,
    out: opt.OutDir = None,
    budget: Optional[int] = typer.Option(None, "--budget", help="Compute budget in adapter-steps (one optimizer step of one config); fixes the step count unless --steps does."),
    steps: opt.Steps = None,
    time: Optional[float] = typer.Option(None, "--time", help="Wall-clock budget in seconds instead of --budget (a short calibration run measures adapter-steps per second)."),
    eval_data: opt.EvalData = None,
    eval_fraction: opt.EvalFraction = 0.1,
    task: str = typer.Option("standard", "--task", help="recommend's task type for the start: style | standard | domain-shift | full-parity."),
    targets: str = typer.Option("all-linear", "--targets", help="Target set of every config: all-linear, attention, mlp, q_proj,v_proj or re:<regex>."),
    rank: Optional[int] = typer.Option(None, "--rank", help="Start rank instead of recommend's (the grid is r/2 .. 4r)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Start learning rate instead of recommend's (the grid is lr/3, lr, 3lr)."),
    batch_size: opt.BatchSize = DEFAULT.batch_size,
    max_len: opt.MaxLen = DEFAULT.max_len,
    grad_accum: opt.GradAccum = DEFAULT.grad_accum,
    dropout: opt.Dropout = DEFAULT.dropout,
    packing: opt.Packing = DEFAULT.packing,
    gradient_checkpointing: opt.GradientCheckpointing = DEFAULT.gradient_checkpointing,
    dtype: opt.Dtype = DEFAULT.dtype,
    load_in_4bit: opt.LoadIn4bit = DEFAULT.load_in_4bit,
    seed: opt.Seed = DEFAULT.seed,
    eval_every: opt.EvalEvery = None,
    metric: opt.Metric = "eval_loss",
    max_new_tokens: opt.MaxNewTokens = MAX_NEW_TOKENS,
    devices: Optional[str] = typer.Option(None, "--devices", help="Devices, e.g. cuda:0,cuda:1 or cpu (default: all local GPUs, else cpu)."),
    gpu_memory: opt.GpuMemory = None,
    memory_fraction: opt.MemoryFraction = SweepSettings.model_fields["memory_fraction"].default,
    no_rank_check: bool = typer.Option(False, "--no-rank-check", help="Skip the winner's truncation curve and smaller-rank check."),
    variants: str = typer.Option("lora,rslora", "--variants", help="Scalings explored (lora, rslora, dora); add full for full fine-tuning as the reference."),
    full_lrs: Optional[str] = typer.Option(None, "--full-lrs", help="Learning rates of the full variant (default: the explored ones / 10)."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue the tune in this directory (its settings are kept)."),
    trust_remote_code: opt.TrustRemoteCode = DEFAULT.trust_remote_code,
    as_json: opt.Json = False,
) -> None:
    """Find the best rank, alpha, scaling and learning rate on your data within a compute budget: an
    exploration grid around recommend's start trained at once, early stops, refinement, the best continued
    from their checkpoints, then the rank check; the best adapter, exports for six trainers and a report.

    Example: loradial tune --model ./my-model --data train.jsonl --eval-data eval.jsonl --budget 4000 --out runs/tune
    """
    from loradial.flows.tune import tune

    ignored = given_options(ctx, ("resume", "as_json", "devices"))

    def call():
        if resume:
            refuse_with_resume(ignored)
            return tune(out=resume, resume=True, devices=split_list(devices) or None, progress=True)
        if out is None:
            raise LoradialError("no output directory", "pass --out DIR (or --resume DIR to continue a tune)")
        return tune(model, data, out=out, budget=budget, steps=steps, time=time, eval_data=eval_data, eval_fraction=eval_fraction,
                    task=task, targets=targets, rank=rank, lr=lr, batch_size=batch_size, max_len=max_len,
                    grad_accum=grad_accum, dropout=dropout, packing=packing,
                    gradient_checkpointing=gradient_checkpointing, dtype=dtype, load_in_4bit=load_in_4bit, seed=seed,
                    eval_every=eval_every, metric=metric, max_new_tokens=max_new_tokens, devices=split_list(devices) or None, gpu_memory=gpu_memory,
                    memory_fraction=memory_fraction,
                    trust_remote_code=trust_remote_code, rank_check=not no_rank_check, progress=True,
                    variants=split_list(variants, str, "variant"),
                    full_lrs=split_list(full_lrs, float, "learning rate") if full_lrs is not None else None)

    where = resume or out
    run(call, as_json, render, interrupted_hint=f"continue it with `loradial tune --resume {where}` (finished work is kept)")
