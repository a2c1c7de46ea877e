"""`loradial sweep`: train a grid of LoRA configs at once on one frozen base and rank them."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from loradial.cli import options as opt
from loradial.settings import MAX_NEW_TOKENS, DEFAULT, SweepSettings
from loradial.cli.common import app, given_options, refuse_with_resume, console, run, split_list


def _fmt(x, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def render(result) -> None:
    from loradial.sweeps.pack import fmt_bytes
    from loradial.sweeps.results import sort_for_table

    halving = result.settings.get("halving_boundaries")
    title = f"sweep {result.out}: {len(result.configs)} configs in {result.n_packs} pack(s)"
    table = Table(title=title + (f", halving at steps {halving[:-1]}" if halving and len(halving) > 1 else ""))
    em = any(r.get("exact_match") is not None for r in result.configs)
    for col in ("config", "params", "train", "eval best", "eval final", *(["exact match"] if em else []), "gap",
                "verdict", "tok/s", "peak mem", "stopped"):
        table.add_column(col, justify="left" if col in ("config", "verdict") else "right", no_wrap=col == "config")
    for r in sort_for_table(result.configs):
        mark = "[bold green]* [/]" if r["name"] == result.best else ""
        table.add_row(
            mark + r["name"], f"{r['trainable_params']:,}", _fmt(r["final_train_loss"]), _fmt(r["best_eval_loss"]),
            _fmt(r["final_eval_loss"]), *([_fmt(r.get("exact_match"), 3)] if em else []), _fmt(r["gap"], 3), r["verdict"],
            _fmt(None if r["tokens_per_s"] is None else round(r["tokens_per_s"])),
            fmt_bytes(r["peak_memory_bytes"]) if r.get("peak_memory_bytes") else "-",
            "-" if r["stopped_at"] is None else f"step {r['stopped_at']}",
        )
    console.print(table)
    if result.best:
        console.print(f"best: [bold]{result.best}[/] -> {result.out}/adapters/{result.best}")
    fit = result.lr_rank_fit
    if fit:
        spread = "" if fit.get("spread") is None else f" +/- {fit['spread']:.2f}"
        console.print(f"measured LR-rank exponent: {fit['exponent']:.2f}{spread} (lr(r) = lr * (r/16)^-exponent)")
    full = getattr(result, "full_ft", None)
    if full and full.get("per_rank"):
        pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"
        ft = Table(title=f"vs full fine-tuning ({full['config']}: eval loss {_fmt(full['eval_loss'])}, "
                         f"base {_fmt(full['base_eval_loss'])})")
        for col in ("r", "best config", "eval", "of full FT's gain", "params vs full", "memory vs full", "time vs full"):
            ft.add_column(col, justify="left" if col == "best config" else "right")
        for p in full["per_rank"]:
            ft.add_row(str(p["r"]), p["config"], _fmt(p["eval_loss"]), pct(p["full_ft_gain_fraction"]),
                       pct(p["params_vs_full"]), pct(p["memory_vs_full"]), pct(p["time_vs_full"]))
        console.print(ft)
        within = full.get("smallest_rank_within_1pct")
        console.print(f"smallest rank within 1% of full fine-tuning's eval loss: {within if within is not None else 'none'}")
    console.print(f"wall time {result.wall_seconds:.1f} s; results: {result.out}/results.json")


@app.command("sweep")
def sweep_cmd(
    ctx: typer.Context,
    model: opt.ModelDir = None,
    data: opt.Data = None,
    out: opt.OutDir = None,
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue the sweep in this directory (all settings come from its sweep.yaml)."),
    ranks: Optional[str] = typer.Option(None, "--ranks", help="Ranks, e.g. 4,8,16,32."),
    alphas: Optional[str] = typer.Option(None, "--alphas", help="'ratio:0.5,1,2' (alpha = ratio x r) or fixed values '16,32'. Default: alpha = r."),
    variants: Optional[str] = typer.Option(None, "--variants", help="lora,rslora,dora, and full (full fine-tuning as the reference)."),
    full_lrs: Optional[str] = typer.Option(None, "--full-lrs", help="Learning rates of the full variant (default: each --lr / 10)."),
    targets: Optional[list[str]] = typer.Option(None, "--targets", help="A target set (repeatable): all-linear, attention, mlp, q_proj,v_proj or re:<regex>."),
    lr: Optional[str] = typer.Option(None, "--lr", help="Learning rate(s), e.g. 2e-4 or 1e-4,2e-4,4e-4."),
    lr_rank_exponent: Optional[float] = typer.Option(None, "--lr-rank-exponent", help="lr(r) = lr x (r/16)^-exponent (default 0)."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Seeds, e.g. 0,1,2."),
    grid: Optional[str] = typer.Option(None, "--grid", help="YAML grid with keys ranks, alphas, variants, targets, lrs, lr_rank_exponent, seeds, full_lrs (flags override)."),
    steps: opt.Steps = None,
    epochs: opt.Epochs = None,
    batch_size: opt.BatchSize = DEFAULT.batch_size,
    grad_accum: opt.GradAccum = DEFAULT.grad_accum,
    max_len: opt.MaxLen = DEFAULT.max_len,
    packing: opt.Packing = DEFAULT.packing,
    dropout: opt.Dropout = DEFAULT.dropout,
    eval_data: opt.EvalData = None,
    eval_fraction: opt.EvalFraction = SweepSettings.model_fields["eval_fraction"].default,
    eval_every: opt.EvalEvery = None,
    metric: opt.Metric = "eval_loss",
    max_new_tokens: opt.MaxNewTokens = MAX_NEW_TOKENS,
    halving: bool = typer.Option(False, "--halving", help="Successive halving: drop the worse half at fixed fractions of the budget."),
    halving_at: Optional[str] = typer.Option(None, "--halving-at", help="Rung fractions of the step budget (default 0.25,0.5)."),
    gpu_memory: opt.GpuMemory = None,
    memory_fraction: opt.MemoryFraction = SweepSettings.model_fields["memory_fraction"].default,
    devices: Optional[str] = typer.Option(None, "--devices", help="Devices, e.g. cuda:0,cuda:1 (one pack per device) or cpu. Default: all local GPUs, else cpu."),
    pack_size: Optional[int] = typer.Option(None, "--pack-size", help="At most this many configs per pack."),
    dtype: opt.Dtype = DEFAULT.dtype,
    gradient_checkpointing: opt.GradientCheckpointing = DEFAULT.gradient_checkpointing,
    load_in_4bit: opt.LoadIn4bit = DEFAULT.load_in_4bit,
    cuda_graphs: opt.CudaGraphs = DEFAULT.cuda_graphs,
    ray: Optional[str] = typer.Option(None, "--ray", help="Run the packs on a Ray cluster: auto (the running one), local (start one here) or an address. The sweep directory must be on a filesystem every node sees."),
    trust_remote_code: opt.TrustRemoteCode = DEFAULT.trust_remote_code,
    ray_workers: Optional[int] = typer.Option(None, "--ray-workers", help="Ray workers, one GPU each (default: every GPU of the cluster)."),
    seed: opt.Seed = DEFAULT.seed,
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="Checkpoint every N steps (default: every 10 minutes and at every rung end)."),
    as_json: opt.Json = False,
) -> None:
    """Train a grid of LoRA configs at once on one frozen base, and rank them by eval loss.

    Example: loradial sweep --model ./my-model --data train.jsonl --ranks 8,16,32 --alphas ratio:1,2 --steps 200 --halving --out sweep1
    """
    from loradial.sweeps.api import sweep as run_sweep

    ignored = given_options(ctx, ("resume", "as_json", "devices", "ray", "ray_workers"))

    def call():
        from loradial.errors import LoradialError

        if resume:
            refuse_with_resume(ignored)
            return run_sweep(out=resume, resume=True, devices=split_list(devices) or None, ray=ray,
                             ray_workers=ray_workers, progress=True)
        if out is None:
            raise LoradialError("no output directory", "pass --out DIR (or --resume DIR to continue a sweep)")
        from loradial.io import check_out_not_overlapping

        check_out_not_overlapping(out, [("base model", model), ("training data", data), ("eval data", eval_data),
                                        ("grid file", grid)])
        return run_sweep(
            model=model, data=data, out=out,
            ranks=split_list(ranks, int, "rank") if ranks is not None else None,
            alphas=alphas,
            variants=split_list(variants, str, "variant") if variants is not None else None,
            targets=list(targets) if targets else None,
            lrs=split_list(lr, float, "learning rate") if lr is not None else None,
            full_lrs=split_list(full_lrs, float, "learning rate") if full_lrs is not None else None,
            lr_rank_exponent=lr_rank_exponent,
            seeds=split_list(seeds, int, "seed") if seeds is not None else None,
            grid=grid, steps=steps, epochs=epochs, batch_size=batch_size, max_len=max_len,
            eval_data=eval_data, eval_fraction=eval_fraction, eval_every=eval_every, metric=metric,
            max_new_tokens=max_new_tokens,
            halving=halving, halving_at=halving_at, gpu_memory=gpu_memory, memory_fraction=memory_fraction,
            devices=split_list(devices) or None, pack_size=pack_size, dtype=dtype, seed=seed,
            checkpoint_every=checkpoint_every, gradient_checkpointing=gradient_checkpointing, grad_accum=grad_accum,
            dropout=dropout, packing=packing, load_in_4bit=load_in_4bit, ray=ray, ray_workers=ray_workers,
            trust_remote_code=trust_remote_code, cuda_graphs=cuda_graphs, progress=True,
        )

    where = resume or out
    run(call, as_json, render, interrupted_hint=f"continue it with `loradial sweep --resume {where}` (finished work is kept)")
