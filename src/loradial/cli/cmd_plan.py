"""`loradial plan`: exact LoRA cost per (target set x rank), offline."""

from __future__ import annotations

from typing import Any, List, Optional

import typer

from loradial.errors import LoradialError
from loradial.cli import options as opt
from loradial.settings import DEFAULT
from loradial.cli.common import app, console, run, split_list

GiB, MB = 1024**3, 1e6
PATTERN_HINT = "e.g. --rank-pattern q_proj=4,v_proj=8 or '{\"q_proj\": 4}': regex keys, positive values (whole ranks)"


def _num(n: float) -> str:
    for unit, div in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return str(int(n))


def _short(type_key: str) -> str:
    """'model.layers.*.self_attn.q_proj' -> 'self_attn.q_proj' (the path inside a layer)."""
    return type_key.rsplit("*.", 1)[-1]


def _cell(t: dict | None, r: int) -> str:
    """Parameters of one module type at one row's rank, with the rank when PEFT uses another one."""
    if t is None:
        return "-"
    if t["rank"] == r:
        return f"{t['params']:,}"
    return f"{t['params']:,} (r={t['rank'] if t['rank'] is not None else t['ranks']})"


_MEMORY_PARTS = ("frozen_weights", "adapter_weights", "gradients", "optimizer_states", "activations", "logits", "overhead")


def _render(result: Any) -> None:
    from rich.table import Table

    m, s = result.model, result.settings
    console.print(
        f"[bold]{m['name']}[/] ({m['source']}, {m['model_type']}, {m['model_class']}): "
        f"{m['total_params']:,} base parameters, {m['num_layers']} layers" + (", tied embeddings" if m["tied_embeddings"] else ""),
        soft_wrap=True,
    )
    extras = ", ".join(k for k in ("use_dora", "use_rslora", "lora_bias") if s[k])
    by_set: dict[str, list] = {}
    for row in result.rows:
        by_set.setdefault(row.targets, []).append(row)
    for text, rows in by_set.items():
        tm = rows[0].target_modules
        title = f"targets {text!r}" + ("" if tm == text else f" = {tm}") + (f" [{extras}]" if extras else "")
        table = Table(title=title, title_justify="left")
        for col in ("rank", "alpha", "modules", "trainable", "% of base", "adapter MB", "+FLOPs/token", "peak GiB"):
            table.add_column(col, justify="right")
        for row in rows:
            peak = "-" if row.peak_memory_bytes is None else f"{row.peak_memory_bytes / GiB:.2f}"
            table.add_row(
                str(row.rank), f"{row.lora_alpha:g}", str(row.n_modules), f"{row.trainable_params:,}",
                f"{row.trainable_percent:.3f}%", f"{row.adapter_bytes['fp32'] / MB:,.1f}", _num(row.extra_flops_per_token), peak,
            )
        console.print(table)
        types = Table(title="  trainable parameters per module type", title_justify="left")
        for col in ("type", "kind", "d_in", "d_out", "count"):
            types.add_column(col, justify="left" if col in ("type", "kind") else "right")
        for row in rows:
            types.add_column(f"r={row.rank}", justify="right")
        keyed = [{(t["type"], t["kind"], t["d_in"], t["d_out"], t["experts"]): t for t in row.modules} for row in rows]
        for key, t in keyed[0].items():
            kind = t["kind"] + (f" x{t['experts']}" if t["experts"] > 1 else "")
            cells = [_cell(k.get(key), row.rank) for k, row in zip(keyed, rows)]
            types.add_row(_short(t["type"]), kind, str(t["d_in"]), str(t["d_out"]), str(t["count"]), *cells)
        console.print(types)
        if rows[0].memory_breakdown:
            mem = Table(title=(f"  training memory, GiB (batch {s['batch_size']} x {s['seq_len']} tokens, {s['dtype']}, quant "
                               f"{s['quant']}, {s['attn_implementation']}, "
                               f"{'gradient checkpointing' if s['gradient_checkpointing'] else 'no checkpointing'})"),
                        title_justify="left")
            mem.add_column("rank", justify="right")
            for part in _MEMORY_PARTS:
                mem.add_column(part.replace("_", " "), justify="right")
            mem.add_column("peak", justify="right")
            for row in rows:
                b = row.memory_breakdown
                mem.add_row(str(row.rank), *(f"{b.get(p, 0) / GiB:.2f}" for p in _MEMORY_PARTS), f"{row.peak_memory_bytes / GiB:.2f}")
            console.print(mem)
    full = getattr(result, "full", None)
    if full:
        ft = Table(title="full fine-tuning (the reference: fp32 weights, gradients and AdamW states)", title_justify="left")
        for col in ("variant", "trainable", "% of base", "peak GiB", "peak GiB, no checkpointing", "peak GiB, checkpointing"):
            ft.add_column(col, justify="right")
        ft.add_row("full", f"{full['trainable_params']:,}", f"{full['trainable_percent']:.0f}%",
                   f"{full['peak_memory_bytes'] / GiB:.2f}", f"{full['peak_memory_bytes_no_checkpointing'] / GiB:.2f}",
                   f"{full['peak_memory_bytes_checkpointing'] / GiB:.2f}")
        console.print(ft)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", soft_wrap=True)


@app.command("plan")
def plan_cmd(
    model: opt.ModelConfig = "llama-2-7b",
    rank: str = typer.Option("8,16,64,256", "--rank", "-r", help="Comma-separated ranks; one row each."),
    targets: Optional[List[str]] = typer.Option(
        None, "--targets", "-t",
        help="One target set per occurrence: a comma list of module names (q_proj,v_proj), all-linear, attention, mlp, "
        "or re:<regex> (full match). Repeat for several sets. [default: attention and all-linear]"),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="lora_alpha for every row [default: alpha = r]."),
    dora: bool = typer.Option(False, "--dora", help="DoRA: a trainable magnitude vector per module."),
    rslora: bool = typer.Option(False, "--rslora", help="rsLoRA scaling alpha/sqrt(r)."),
    lora_bias: bool = typer.Option(False, "--lora-bias", help="A trainable bias on lora_B."),
    layers: Optional[str] = typer.Option(None, "--layers", help="layers_to_transform, e.g. 0,1,2 or 0-7."),
    layers_pattern: Optional[str] = typer.Option(None, "--layers-pattern", help="PEFT layers_pattern (e.g. layers)."),
    exclude: Optional[str] = typer.Option(None, "--exclude", help="exclude_modules: comma list of names, or re:<regex>."),
    rank_pattern: Optional[str] = typer.Option(None, "--rank-pattern", help="'q_proj=4,v_proj=8' or a JSON object (regex keys, first match wins)."),
    alpha_pattern: Optional[str] = typer.Option(None, "--alpha-pattern", help="Like --rank-pattern, for lora_alpha."),
    modules_to_save: Optional[str] = typer.Option(None, "--modules-to-save", help="PEFT modules_to_save, e.g. lm_head,embed_tokens (fully trained copies)."),
    trainable_tokens: Optional[str] = typer.Option(None, "--trainable-tokens", help="PEFT trainable_token_indices: '0-9,42' or a JSON object {module: [ids]}."),
    target_parameters: Optional[str] = typer.Option(None, "--target-parameters", help="PEFT target_parameters, e.g. mlp.experts.gate_up_proj (MoE experts)."),
    bias: str = typer.Option("none", "--bias", help="PEFT bias: none, lora_only or all (trained biases)."),
    batch_size: int = typer.Option(1, "--batch-size", help="Sequences per training step (memory estimate)."),
    seq_len: int = typer.Option(512, "--seq-len", help="Tokens per sequence (memory estimate)."),
    dtype: str = typer.Option("bf16", "--dtype", help="Dtype of the frozen base: bf16, fp16 or fp32."),
    quant: str = typer.Option("none", "--quant", help="Base quantization: none, 8bit or 4bit (bitsandbytes NF4)."),
    gradient_checkpointing: opt.GradientCheckpointing = DEFAULT.gradient_checkpointing,
    attn: str = typer.Option("sdpa", "--attn", help="Attention implementation: sdpa, eager or flash_attention_2."),
    optim_dtype: str = typer.Option("fp32", "--optim-dtype", help="AdamW state dtype of the full fine-tuning row: fp32 or bf16."),
    trust_remote_code: opt.TrustRemoteCode = DEFAULT.trust_remote_code,
    as_json: opt.Json = False,
) -> None:
    """Exact trainable parameters, adapter size, extra FLOPs and training memory per target set and rank.

    Example: loradial plan --model llama-2-7b --rank 8,16,64,256 --targets q_proj,v_proj --targets all-linear
    """

    def call():
        from loradial.cost.planning import DEFAULT_TARGETS, plan

        try:
            return plan(
                model, split_list(rank, int, "rank"), targets or list(DEFAULT_TARGETS), alpha=alpha, use_dora=dora,
                use_rslora=rslora, lora_bias=lora_bias, layers=layers, layers_pattern=layers_pattern, exclude=exclude,
                rank_pattern=rank_pattern, alpha_pattern=alpha_pattern, batch_size=batch_size, seq_len=seq_len,
                dtype=dtype, quant=quant, gradient_checkpointing=gradient_checkpointing, attn_implementation=attn,
                trust_remote_code=trust_remote_code, modules_to_save=modules_to_save,
                trainable_token_indices=trainable_tokens, target_parameters=target_parameters, bias=bias,
                full_optim_dtype=optim_dtype,
            )
        except LoradialError as err:  # the pattern checks name the bad entry; say what a good flag is
            if err.message.startswith(("rank_pattern", "alpha_pattern", "pattern key")):
                err.hint = PATTERN_HINT
            raise

    run(call, as_json, _render)
