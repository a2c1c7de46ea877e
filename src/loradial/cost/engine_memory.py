r"""Peak memory of one step of the multi-adapter engine (``loradial.engine``), from shapes alone.

``memory.py`` models a user's plain PEFT loop (HF loss with full fp32 logits); this module models
what the engine allocates instead, for the sweep's packer. Notation: K adapters, m sequences per
adapter (``batch_size``), T = ``max_len`` rounded up to the engine's pad multiple (8 on CUDA), so
M = K·m·T tokens (every sequence is assumed ``max_len`` long: a pack must fit its longest batch),
N = K·m·(T − 1) label positions, h hidden, V vocabulary, c the compute dtype's size (2 under the
engine's bf16 autocast on CUDA; the base dtype's size on a CPU, where there is no autocast),
P_k adapter k's trainable parameters as the engine stores them (``trainable_params`` of its
(module, rank) pairs; ranks zero-padded inside a bucket count padded).

Static (whole step)
    frozen_weights        the base in ``dtype`` (NF4 per ``memory.nf4_bytes`` with ``quant="4bit"``)
    adapter_weights       4·ΣP_k (bucket tensors A (G, d_in, r), B (G, r, d_out), DoRA m (G, d_out), fp32)
    optimizer_states      8·ΣP_k (AdamW exp_avg, exp_avg_sq, fp32)
    gradients             4·ΣP_k with the default ``optimizer="flat"`` (engine/flat.py: one fp32 grad
                          buffer, allocated once and attached as every bucket tensor's ``.grad``; the
                          fused backward writes into it), so it is in every phase below; with
                          ``optimizer="per-adapter"`` (engine/optim.py) autograd allocates the gradients
                          during backward, so they count from the recompute / optimizer-step moments on
    overhead              cuBLAS workspaces on CUDA (``memory.WORKSPACE_BYTES``)
    bucket_padding        an allowance the caller may add for padding it cannot see (the packer does)

Saved by the forward (engine/layers.py, engine/fused.py; the base layers as ``activations.layer_saved``)
    base_activations      transformers' saved set per decoder layer from the first adapted one on,
                          the final norm's (``activations.saved_activations``)
    lora_activations      per adapted module: its input, once per module and shared by modules that
                          read one tensor (q/k/v, gate/up; o_proj's is SDPA's saved output), c·M·d_in;
                          per adapter: h = x·sAᵀ, c·m·T·r; the compute-dtype copies s·Aᵀ and Bᵀ,
                          c·r·(d_in + d_out) (Bᵀ is B itself in fp32); dropout: its bool mask and the
                          dropped input, (1 + c)·m·T·d_in; DoRA: the base output, c·m·T·d_out (twice when
                          the module has a single bucket under the per-adapter optimizer: that path
                          goes through autograd, which also keeps W·x; the flat one is fused); an
                          embedding: int64 ids and h, (8 + c·r)·m·T
    With gradient checkpointing only each decoder layer's input survives (L·c_res·M·h, c_res the
    residual stream's size); backward recomputes one layer at a time.

Loss (engine/loss.py): ∂ℓ/∂h of the N label positions is kept (c_w·N·h, c_w the head's compute
size); the forward also holds the final hidden states (c·M·h), their N selected rows (c·N·h) and
one chunk's logits: (c_w + 4)·C·V (the logits and their fp32 copy; 4·C·V when c_w = 4), plus
4·C·V when there are several chunks (the previous chunk's softmax is still referenced while the
next is computed), C = min(N, ``loss_chunk_tokens`` or max(128, 2²⁸ // V)) — never the full M·V
logits; and the batch's ids and label indices (8·M + 28·N).

Transients (largest short-lived buffer of backward, on top of the incoming gradient of the
residual stream c_res·M·h): an MLP's input grads 3·c·M·I; attention's dq, dk, dv + fp32 dq,
c·M·(q + 2kv) + 4·M·q; an RMSNorm's fp32 backward, 12·M·h; an adapted module's input grads
(base + LoRA + sum) 3·c·M·d_in; DoRA's magnitude gradient over fp32 copies,
(2c + 4 + 3·f)·G·m·T·d_out (f = 4 when c < 4, else 0) and its forward's fp32 products
(12 + c)·G·m·T·d_out plus the (G, d_in, d_out) weight-norm work 2·c·G·d_in·d_out; the loss's
backward c_w·N·h + c·M·h; a dequantized 4-bit weight.

    optimizer_temporaries 0: both optimizers update in place with ``torch._fused_adamw_`` (the clip
                          factor is its grad scale); what the step allocates is one 4-byte norm per
                          gradient row or view (measured on a CPU: 17 B … 1 KiB for the packs of
                          tests/test_engine_memory.py). Named apart so a GPU measurement can show one
                          (a foreach fallback would need 8·ΣP_k: the clipped gradient and √v)

Not modelled: the attention mask of a padded batch (the estimate assumes every sequence is
``max_len`` long, so no mask; a padded batch has fewer real tokens but, under SDPA, a (B, 1, T, T)
mask and possibly a slower kernel's saves), mixed per-adapter dropout in one bucket (fp32 keep
masks), Gemma-style soft-capping beyond ``softcap``'s 8·C·V.

The peak is the largest of the moments in ``phases`` (forward_end, forward_layer, backward_start, recompute,
optimizer_step); ``breakdown`` is the memory at that moment, so its values sum to ``total_bytes``.
Checked on a CPU against the storage the engine really allocates (tests/test_engine_memory.py,
benchmarks/sweep/ENGINE_MEMORY.md); the GPU check is ``benchmarks/sweep/engine_memory_check.py``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

from loradial.cost.activations import model_shape, module_stage, norm_saved, saved_activations, shares_input
from loradial.cost.memory import DTYPE_BYTES, WORKSPACE_BYTES, frozen_weight_bytes
from loradial.cost.params import trainable_params
from loradial.errors import LoradialError
from loradial.models.info import LINEAR_KINDS, ModelInfo, ModuleInfo
from loradial.result import Result
from loradial.spec import layer_index

#: The engine's optimizers (``loradial.engine.Engine(optimizer=...)``); "flat" is its default.
OPTIMIZERS = ("flat", "per-adapter")

#: The terms of ``EngineMemoryEstimate.breakdown``, in table order.
TERMS = ("frozen_weights", "adapter_weights", "optimizer_states", "gradients", "optimizer_temporaries",
         "base_activations", "lora_activations", "loss", "backward_transient", "bucket_padding", "overhead")


@dataclasses.dataclass(frozen=True)
class AdapterShape:
    """One adapter of a pack as the engine stores it: its (module, rank) pairs, DoRA, dropout."""

    targeted: tuple[tuple[ModuleInfo, int], ...]
    use_dora: bool = False
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "targeted", tuple((m, int(r)) for m, r in self.targeted))
        if not self.targeted:
            raise LoradialError("an adapter with no targeted module", "pass the (module, rank) pairs its targets matched")
        for m, r in self.targeted:
            if r <= 0:
                raise LoradialError(f"rank of {m.name} must be a positive integer, got {r!r}", "e.g. --rank 16")
        if not 0 <= self.dropout < 1:
            raise LoradialError(f"lora_dropout must be in [0, 1), got {self.dropout}", "e.g. 0.05, or 0 for none")

    @property
    def ranks(self) -> dict[str, int]:
        """Module name -> rank."""
        return {m.name: r for m, r in self.targeted}

    @property
    def params(self) -> int:
        return int(trainable_params(list(self.targeted), self.use_dora))


@dataclasses.dataclass
class EngineMemoryEstimate(Result):
    """Estimated peak bytes of one engine step (``max_memory_allocated`` on CUDA)."""

    total_bytes: int
    breakdown: dict[str, int]
    """Bytes at the peak moment, by term (``TERMS``); they sum to total_bytes."""
    peak_phase: str
    phases: dict[str, int]
    """Total bytes at each candidate peak moment; total_bytes is the largest."""
    tokens: int
    """M = K·m·T, the tokens of one micro-batch of the pack."""

    @property
    def total_gib(self) -> float:
        return self.total_bytes / 2**30


def loss_chunk(vocab: int, chunk_tokens: int | None = None) -> int:
    """Tokens per chunk of the engine's loss (engine/loss.py: ~2²⁸ logits per chunk, at least 128)."""
    return chunk_tokens or max(128, (1 << 28) // max(vocab, 1))


def _same_bucket(adapters: Sequence[AdapterShape], maps: dict, name: str) -> bool:
    """One bucket over every slice of this module (the engine's autograd path): all adapters target it
    with one rank and one DoRA flag."""
    keys = {(maps[id(a)].get(name), a.use_dora) for a in adapters}
    return len(keys) == 1 and next(iter(keys))[0] is not None


def estimate_engine_memory(info: ModelInfo, adapters: Sequence[AdapterShape], *, batch_size: int, max_len: int,
                           dtype: str = "bf16", device: str = "cuda", quant: str = "none",
                           gradient_checkpointing: bool = False, attn_implementation: str = "sdpa",
                           loss_chunk_tokens: int | None = None, softcap: bool = False,
                           padding_bytes: int = 0, optimizer: str = "flat") -> EngineMemoryEstimate:
    """Peak memory of one engine step for a pack of ``adapters`` (formulas in the module docstring).

    ``device``: 'cuda' (bf16 autocast, T rounded up to a multiple of 8, cuBLAS workspaces) or 'cpu'
    (no autocast: everything in ``dtype``). ``padding_bytes``: an allowance added as ``bucket_padding``.
    ``optimizer``: the engine's, 'flat' (its default: a persistent gradient buffer, every bucket through
    the fused node) or 'per-adapter'.
    """
    if not adapters:
        raise LoradialError("no adapter in the pack", "pass at least one AdapterShape")
    for name, v in (("batch-size", batch_size), ("max-len", max_len)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise LoradialError(f"--{name} must be a positive integer, got {v!r}", f"e.g. --{name} 4")
    if dtype not in DTYPE_BYTES:
        raise LoradialError(f"unknown dtype {dtype!r}", f"use one of {', '.join(DTYPE_BYTES)}")
    if device not in ("cuda", "cpu"):
        raise LoradialError(f"unknown device kind {device!r}", "use 'cuda' or 'cpu'")
    if optimizer not in OPTIMIZERS:
        raise LoradialError(f"unknown optimizer {optimizer!r}", f"use one of {', '.join(OPTIMIZERS)}")
    flat = optimizer == "flat"
    s = model_shape(info)
    cuda = device == "cuda"
    K, m = len(adapters), batch_size
    T = -(-max_len // 8) * 8 if cuda else max_len
    Mk = m * T                      # tokens of one adapter's slice
    M = K * Mk
    N = K * m * max(T - 1, 1)      # label positions (position t predicts t + 1)
    c_base = DTYPE_BYTES[dtype]
    c = 2 if cuda else c_base       # compute dtype: bf16 autocast on CUDA
    c_res = c_base                  # the residual stream stays in the base dtype
    c_w = c                         # the head's weight in the compute dtype
    f32 = 4 if c < 4 else 0         # bytes of an fp32 copy of a compute-dtype tensor (0: .float() is free)

    # --- static ---
    P = sum(a.params for a in adapters)
    static = {"frozen_weights": frozen_weight_bytes(info, dtype, quant), "adapter_weights": 4 * P,
              "optimizer_states": 8 * P, "bucket_padding": int(padding_bytes),
              "overhead": WORKSPACE_BYTES if cuda else 0}

    # --- base activations: transformers' saved set from the first adapted layer on ---
    union: dict[str, tuple[ModuleInfo, int]] = {}
    for a in adapters:
        for mod, r in a.targeted:
            union.setdefault(mod.name, (mod, r))
    sa = saved_activations(info, list(union.values()), batch_size=m, seq_len=T, dtype=dtype if cuda else "bf16",
                           attn_implementation=attn_implementation, n_adapters=K, c=c,
                           quant=quant)
    per_layer = list(sa.per_layer)
    frozen_copy = list(sa.frozen_copy_layer) if cuda else [0] * s.layers

    # --- the engine's LoRA saves, per module ---
    L = s.layers
    lora_layer = [0] * L
    lora_outside = 0
    first = min((i for i, x in enumerate(per_layer) if x > 0), default=L)
    head_saved = norm_saved(s, M) if first < L else 0  # the final norm's fp32 input and rsqrt
    first_stage = min((module_stage(mod) for mod, _ in union.values() if layer_index(mod.name) == first
                       and mod.kind != "embedding"), default=0)
    seen: set = set()
    dora_fwd = dora_bwd = dora_norm = 0
    in_dims = []
    maps = {id(a): a.ranks for a in adapters}
    for name, (mod, _) in union.items():
        li = layer_index(name)
        users = [(a, maps[id(a)][name]) for a in adapters if name in maps[id(a)]]
        # one bucket over every slice goes through autograd only with the per-adapter optimizer
        single = not flat and _same_bucket(adapters, maps, name)
        if mod.kind == "embedding":
            saved = sum(8 * Mk + c * Mk * r + (c * r * mod.d_out if c != 4 else 0) for _, r in users)
        else:
            in_dims.append(mod.d_in)
            sdpa_out = not (li == first and first_stage == 2)
            saved = 0 if shares_input(mod, seen, attn_implementation, sdpa_out) else c * M * mod.d_in
            dora_g = 0
            for a, r in users:
                saved += c * Mk * r + c * r * mod.d_in + (c * r * mod.d_out if c != 4 else 0)
                if a.dropout > 0:
                    saved += (1 + c) * Mk * mod.d_in
                if a.use_dora:
                    saved += (2 if single else 1) * c * Mk * mod.d_out
                    dora_g += 1
            if dora_g:
                dora_fwd = max(dora_fwd, (12 + c) * dora_g * Mk * mod.d_out)
                dora_bwd = max(dora_bwd, (2 * c + 4 + 3 * f32) * dora_g * Mk * mod.d_out + c * M * mod.d_out)
                dora_norm = max(dora_norm, 2 * c * dora_g * mod.d_in * mod.d_out)
        if li is not None and li < L and mod.kind != "embedding":
            lora_layer[li] += saved
        else:
            lora_outside += saved

    # --- loss ---
    C = min(N, loss_chunk(s.vocab, loss_chunk_tokens))
    # one chunk's logits and their fp32 copy; from the second chunk on the previous chunk's fp32
    # softmax is still bound (``p``) while the next one is computed
    f_chunk = (c_w if c_w != 4 else 0) + 4 + (4 if N > C else 0)
    logits = f_chunk * C * s.vocab + (8 * C * s.vocab if softcap else 0) + c_w * C * s.hidden
    if cuda and c_base == 4:
        logits += c_w * s.vocab * s.hidden  # the head's weight cast to bf16 per call
    loss_saved = c_w * N * s.hidden
    batch = 8 * M + 28 * N  # input ids; label index, targets (+ their K-fold repeats), fp32 losses
    loss_fwd = loss_saved + c * M * s.hidden + c * N * s.hidden + logits + batch
    loss_bwd = loss_saved + c_w * N * s.hidden + c * M * s.hidden

    # --- backward transients (on top of the incoming gradient of the residual stream) ---
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    inter = s.experts_per_tok * s.moe_intermediate + s.shared_intermediate if s.n_experts else s.intermediate
    cands = [3 * c * M * inter, c * M * (q + 2 * kv) + 4 * M * q, 12 * M * s.hidden, dora_bwd]
    if in_dims:
        cands.append(3 * c * M * max(in_dims))
    if attn_implementation == "eager":
        cands.append((4 + c) * K * m * s.heads * T * T)
    if quant != "none":
        cands.append(2 * max((mm.d_in * mm.d_out for mm in info.modules if mm.kind in LINEAR_KINDS), default=0))
    layer_tr = c_res * M * s.hidden + max(cands)
    fwd_tr = max(dora_fwd, dora_norm)  # forward transients inside a layer

    grads = 4 * P
    g0 = grads if flat else 0  # the flat grad buffer is allocated once and alive all step
    opt_tmp = 0  # both optimizers run torch._fused_adamw_ in place
    base_acts = sum(per_layer) + sum(frozen_copy) + head_saved + sa.mask
    lora_acts = sum(lora_layer) + lora_outside
    # each phase: (gradients, optimizer temporaries, base activations, lora activations, loss, transient)
    phases: dict[str, tuple[int, int, int, int, int, int]] = {}
    if not gradient_checkpointing:
        phases["forward_end"] = (g0, 0, base_acts, lora_acts, loss_fwd, 0)
        phases["forward_layer"] = (g0, 0, base_acts, lora_acts, 0, fwd_tr)
        phases["backward_start"] = (g0, 0, base_acts, lora_acts, max(loss_bwd, layer_tr), 0)
    else:
        inputs = L * c_res * M * s.hidden
        outside = head_saved + sa.mask
        one = max((per_layer[i] + frozen_copy[i] + lora_layer[i] for i in range(L)), default=0)
        one_lora = max((lora_layer[i] for i in range(L)), default=0)
        one_base = one - one_lora
        phases["forward_end"] = (g0, 0, inputs + outside, lora_outside, loss_fwd, 0)
        phases["forward_layer"] = (g0, 0, inputs + outside + one_base, lora_outside + one_lora, 0, fwd_tr)
        phases["backward_start"] = (g0, 0, inputs + outside, lora_outside, loss_bwd, 0)
        last = (g0, 0, inputs + outside + one_base, lora_outside + one_lora, 0, layer_tr)
        first_ = (grads, 0, c_res * M * s.hidden + outside + one_base, lora_outside + one_lora, 0, layer_tr)
        phases["recompute"] = max(last, first_, key=sum)
    phases["optimizer_step"] = (grads, opt_tmp, 0, 0, 0, 0)

    base = sum(static.values())
    totals = {k: base + sum(v) for k, v in phases.items()}
    peak = max(totals, key=totals.get)
    g, ot, ba, la, lo, tr = phases[peak]
    breakdown = {"frozen_weights": static["frozen_weights"], "adapter_weights": static["adapter_weights"],
                 "optimizer_states": static["optimizer_states"], "gradients": g, "optimizer_temporaries": ot,
                 "base_activations": ba, "lora_activations": la, "loss": lo, "backward_transient": tr,
                 "bucket_padding": static["bucket_padding"], "overhead": static["overhead"]}
    return EngineMemoryEstimate(totals[peak], breakdown, peak, totals, M)


def padding_allowance(device_total_bytes: int | None, cuda: bool) -> int:
    """Bytes the engine may spend on zero-padded ranks when a pack mixes ranks: its bucket planner
    (engine/trainer.py ``_overhead``, layers.py ``choose_overhead``) pads at most 5 % of the GPU's
    memory (16 MiB on a CPU) at 16 bytes per padded parameter (weight, gradient, two moments; the
    fused AdamW step adds no temporary), so that budget itself."""
    budget = 0.05 * device_total_bytes if cuda and device_total_bytes else float(16 << 20)
    return int(math.ceil(budget))


__all__ = ["AdapterShape", "EngineMemoryEstimate", "OPTIMIZERS", "TERMS", "estimate_engine_memory", "loss_chunk",
           "padding_allowance"]
