r"""Peak GPU memory of one LoRA training step, from the model's shapes alone.

What is modelled: ``torch.cuda.max_memory_allocated()`` over one step of a plain loop ::

    opt.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):      # fp16 autocast when dtype="fp16"
        loss = model(input_ids=x, labels=x).loss           # HF causal-LM loss
    loss.backward()                                        # outside autocast
    opt.step()                                             # torch.optim.AdamW (foreach)

for PEFT-default LoRA (adapter weights fp32, ``lora_dropout`` 0 or, without DoRA, > 0) on a
frozen base stored in ``dtype``. Notation: M = K·B·T tokens (K adapters, each with its own slice of
B sequences of length T), h hidden, I intermediate, L layers, n_h / n_kv heads, d_h head dim,
q = n_h·d_h, kv = n_kv·d_h, V vocabulary, c = 2 bytes (autocast compute dtype), P trainable
parameters of one adapter.

Static (alive through the whole step)
    frozen weights   params × bytes(dtype); quantized linears per bitsandbytes (``nf4_bytes``,
                     ``int8_bytes``); everything else (embeddings, norms, head, biases) in dtype
    adapter weights  4·K·P (fp32)          optimizer states  8·K·P (AdamW exp_avg + exp_avg_sq)
    overhead         ``WORKSPACE_BYTES`` (cuBLAS workspaces; the CUDA context is not in the counter)

Saved for backward: ``loradial.activations`` (``saved_activations``; the per-layer table is there).

Gradient checkpointing (non-reentrant, transformers' default): only each layer's input survives the
forward (L·M·h·bytes(residual)); backward recomputes one layer at a time (that layer's saved set).

Logits and loss (``ForCausalLMLoss`` upcasts logits to fp32, then cross_entropy = log_softmax +
nll_loss): at the start of backward the saved fp32 log-probabilities, nll's fp32 gradient and
log_softmax's fp32 gradient coexist: 12·M·V bytes (the bf16 logits are gone with the output object).

The step's peak is the largest of these moments (``phases``):

* ``backward_start``  static + all saved activations + 12·M·V (without checkpointing these include the
  bf16 adapter copies), or the largest backward temporary instead of 12·M·V if that is larger;
* ``forward_end``     (checkpointing) layer inputs + autocast's bf16 adapter copies + the loss's
  (c + 8)·M·V (bf16 logits, their fp32 copy, log-probs), still inside autocast;
* ``recompute``       (checkpointing) static + layer inputs + one layer's saved set + temporaries,
  or the same near the end of backward with every gradient alive;
* ``optimizer_step``  static + gradients 4·K·P + AdamW's foreach ``sqrt(exp_avg_sq)`` buffer 4·K·P.

``breakdown`` is the memory at the peak moment, so ``sum(breakdown.values()) == total_bytes``;
gradients are 0 at a ``backward_start`` peak (``zero_grad(set_to_none=True)`` freed them). No
constant is fitted: on an H100 (torch 2.11) 16 configurations, 0.5B-8B, ranks 8-256, q,v and
all-linear, checkpointing on/off, came within 0.9% (benchmarks/memory/RESULTS.md). Llama/Qwen2
shapes are validated there and against autograd's saved tensors on CPU (tests/test_memory.py);
the GPT-2/BERT (LayerNorm, GELU), Gemma and MoE branches follow the same rules but are unmeasured.
"""

from __future__ import annotations

import dataclasses
import math

from loradial.cost.activations import Shape, model_shape, saved_activations
from loradial.errors import LoradialError
from loradial.models.info import LINEAR_KINDS, ModelInfo, ModuleInfo
from loradial.result import Result

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
#: Names a user may give for a dtype -> the canonical one.
DTYPE_ALIASES = {"fp32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16"}
QUANTS = ("none", "8bit", "4bit")
ATTENTION = ("sdpa", "flash_attention_2", "flash_attention_3", "eager")
#: cuBLAS workspaces live in PyTorch's caching allocator, so they count in max_memory_allocated: one
#: per (handle, stream), 32 MiB each on Hopper (``CUBLAS_WORKSPACE_CONFIG`` default ":4096:8"), one
#: handle for the forward thread and one for autograd's device thread. (On the H100 the memory
#: allocated before a step exceeded the static estimate without this term by 0.06-0.14 GiB.)
WORKSPACE_BYTES = 2 * 32 * 2**20
NF4_BLOCK = 64        # bitsandbytes quantize_4bit blocksize
NF4_BLOCK2 = 256      # double quantization: quantize_blockwise(absmax - offset, blocksize=256)


@dataclasses.dataclass
class MemoryEstimate(Result):
    """Estimated peak of ``torch.cuda.max_memory_allocated`` for one training step, in bytes."""

    total_bytes: int
    breakdown: dict[str, int]
    """Bytes at the peak moment: frozen_weights, adapter_weights, gradients, optimizer_states,
    activations, logits, overhead (they sum to total_bytes)."""
    peak_phase: str = "backward_start"
    phases: dict[str, int] = dataclasses.field(default_factory=dict)
    """Total bytes at each candidate peak moment; total_bytes is the largest."""

    @property
    def total_gib(self) -> float:
        return self.total_bytes / 2**30


# --- static pieces ------------------------------------------------------------------------------
def nf4_bytes(n: int) -> int:
    """Bytes of one bitsandbytes NF4 weight of n elements with double quantization (QLoRA).

    ``quantize_4bit(W, blocksize=64, compress_statistics=True, quant_type="nf4")``: packed uint8
    ceil(n/2); absmax re-quantized to uint8, ceil(n/64); its fp32 scales, one per 256 blocks;
    the fp32 offset (4) and the 16-entry fp32 NF4 code (64). (bitsandbytes/functional.py; the
    256-entry dynamic map of the second level is shared per device and not counted.)
    """
    blocks = math.ceil(n / NF4_BLOCK)
    return math.ceil(n / 2) + blocks + 4 * math.ceil(blocks / NF4_BLOCK2) + 4 + 64


def int8_bytes(d_in: int, d_out: int) -> int:
    """Bytes of one bitsandbytes LLM.int8 weight: int8 CB (d_out·d_in) + fp32 row scales SCB (d_out)."""
    return d_in * d_out + 4 * d_out


def frozen_weight_bytes(info: ModelInfo, dtype: str = "bf16", quant: str = "none") -> int:
    """Frozen base: total_params × bytes(dtype); with quant, every linear but the output head is
    stored by bitsandbytes (``nf4_bytes`` / ``int8_bytes``, bias kept in dtype), the rest in dtype."""
    b = DTYPE_BYTES[dtype]
    if quant == "none":
        return info.total_params * b
    quantized = [m for m in info.modules if m.kind in LINEAR_KINDS and not m.is_output_head]
    n_q = sum(m.d_in * m.d_out for m in quantized)
    q_bytes = sum(nf4_bytes(m.d_in * m.d_out) if quant == "4bit" else int8_bytes(m.d_in, m.d_out) for m in quantized)
    return (info.total_params - n_q) * b + q_bytes


def lora_param_count(targeted: list[tuple[ModuleInfo, int]], use_dora: bool = False) -> int:
    """Trainable parameters of one adapter (``cost.trainable_params``: PEFT-exact, incl. MoE experts)."""
    from loradial.cost.params import trainable_params

    return trainable_params(targeted, use_dora)


def logits_bytes(M: int, vocab: int) -> int:
    """HF causal-LM loss at the start of backward: fp32 log-probs + nll grad + log_softmax grad, 12·M·V."""
    return 12 * M * vocab


def backward_transient(s: Shape, targeted, Bt: int, T: int, attn: str, quant: str, use_dora: bool,
                       info: ModelInfo, c: int = 2) -> int:
    """Largest short-lived buffer: MLP input grads (3·c·M·I), attention grads (dq, dk, dv + fp32 dq
    accumulator), a LoRA input grad's fp32 round trip, a dequantized weight, DoRA's weight-norm work."""
    M, q, kv = Bt * T, s.heads * s.head_dim, s.kv_heads * s.head_dim
    inter = s.experts_per_tok * s.moe_intermediate + s.shared_intermediate if s.n_experts else s.intermediate
    cands = [3 * c * M * inter, c * M * (q + 2 * kv) + 4 * M * q]
    if attn == "eager":
        cands.append((4 + c) * Bt * s.heads * T * T)
    lin = [m for m, _ in targeted if m.kind != "embedding"]
    if lin:
        cands.append((4 + c) * M * max(m.d_in for m in lin))
    if use_dora and lin:
        cands.append(max(6 * m.d_in ** 2 + 18 * m.d_in * m.d_out for m in lin))
    if quant != "none":
        cands.append(2 * max((m.d_in * m.d_out for m in info.modules if m.kind in LINEAR_KINDS), default=0))
    return max(cands)


# --- the estimate -----------------------------------------------------------------------------------
def check_memory_args(batch_size, seq_len, dtype: str, quant: str, attn: str, n_adapters: int = 1) -> str:
    """The one set of checks of the memory model's arguments (plan and the sweep's packer use it);
    returns the canonical dtype ('float16' -> 'fp16')."""
    for name, v in (("batch-size", batch_size), ("seq-len", seq_len), ("adapters", n_adapters)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise LoradialError(f"--{name} must be a positive integer, got {v!r}", f"e.g. --{name} 1")
    if dtype not in DTYPE_ALIASES:
        raise LoradialError(f"unknown dtype {dtype!r}", f"use one of {', '.join(DTYPE_BYTES)}")
    if quant not in QUANTS:
        raise LoradialError(f"unknown quantization {quant!r}", f"use one of {', '.join(QUANTS)}")
    if quant != "none" and DTYPE_ALIASES[dtype] == "fp32":
        raise LoradialError("--quant needs a 16-bit --dtype", "bitsandbytes computes in bf16 or fp16: use --dtype bf16")
    if attn not in ATTENTION:
        raise LoradialError(f"unknown attention implementation {attn!r}", f"use one of {', '.join(ATTENTION)}")
    return DTYPE_ALIASES[dtype]


def _validate(batch_size, seq_len, dtype, quant, attn, n_adapters, targeted) -> None:
    check_memory_args(batch_size, seq_len, dtype, quant, attn, n_adapters)
    if not targeted:
        raise LoradialError("no targeted modules", "pass the (module, rank) pairs the targets matched")
    for m, r in targeted:
        if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
            raise LoradialError(f"rank of {m.name} must be a positive integer, got {r!r}", "e.g. --rank 16")


def estimate_training_memory(info: ModelInfo, targeted: list[tuple[ModuleInfo, int]], *, use_dora: bool = False,
                             batch_size: int = 1, seq_len: int = 512, dtype: str = "bf16", quant: str = "none",
                             gradient_checkpointing: bool = False, attn_implementation: str = "sdpa",
                             n_adapters: int = 1, lora_dropout: float = 0.0) -> MemoryEstimate:
    """Peak ``max_memory_allocated`` of one LoRA training step (formulas in the module docstring).

    ``targeted``: the matched (module, rank) pairs of ONE adapter; ``n_adapters`` = K adapters on one
    frozen base, each with its own slice of ``batch_size`` sequences.
    """
    _validate(batch_size, seq_len, dtype, quant, attn_implementation, n_adapters, targeted)
    if not 0 <= lora_dropout < 1:
        raise LoradialError(f"lora_dropout must be in [0, 1), got {lora_dropout}", "e.g. 0.05, or 0 for none")
    if use_dora and lora_dropout > 0:
        raise LoradialError("the memory model covers DoRA with lora_dropout 0 only (PEFT's fast DoRA path)",
                            "use lora_dropout 0 with DoRA")
    s = model_shape(info)
    K, T, c = n_adapters, seq_len, 2
    M = K * batch_size * T
    c_res = 4 if dtype == "fp32" else 2  # the residual stream stays fp32 when the base is fp32
    P = lora_param_count(targeted, use_dora)
    static = {"frozen_weights": frozen_weight_bytes(info, dtype, quant), "adapter_weights": 4 * K * P,
              "optimizer_states": 8 * K * P}
    grads = 4 * K * P
    a = saved_activations(info, targeted, use_dora=use_dora, batch_size=batch_size, seq_len=seq_len, dtype=dtype,
                          attn_implementation=attn_implementation, n_adapters=n_adapters, c=c,
                          lora_dropout=lora_dropout, quant=quant)
    logits = logits_bytes(M, s.vocab)
    transient = backward_transient(s, targeted, K * batch_size, T, attn_implementation, quant, use_dora, info, c)

    # each candidate peak moment: (live gradients, activations, logits, transient)
    phases: dict[str, tuple[int, int, int, int]] = {}
    if not gradient_checkpointing:
        phases["backward_start"] = (0, a.total, logits, max(0, transient - logits))
    else:
        inputs = s.layers * c_res * M * s.hidden
        outside = a.lora_outside + a.cache_outside + a.mask
        cache_all = sum(a.cache_layer) + a.cache_outside
        # forward end: still inside autocast, whose cache holds every adapter's bf16 copy; the loss has
        # the bf16 logits, their fp32 copy and the log-probs alive: (c + 8)·M·V
        phases["forward_end"] = (0, inputs + outside + a.head_saved + cache_all - a.cache_outside,
                                 (c + 8) * M * s.vocab, 0)
        phases["backward_start"] = (0, inputs + outside + a.head_saved, logits, 0)
        one = max(map(a.layer, range(s.layers)), default=0)
        # recomputing the last layer: every checkpointed input alive, no grads yet;
        # recomputing the first: one input left, (almost) every gradient accumulated
        last = (0, inputs + one + outside, 0, transient)
        first = (grads, c_res * M * s.hidden + one + outside, 0, transient)
        phases["recompute"] = max(last, first, key=sum)
    phases["optimizer_step"] = (grads, 0, 0, 4 * K * P)  # AdamW foreach: the sqrt(exp_avg_sq) buffer

    base = sum(static.values()) + WORKSPACE_BYTES
    totals = {name: base + sum(v) for name, v in phases.items()}
    peak = max(totals, key=totals.get)
    g, acts, lg, tr = phases[peak]
    breakdown = {"frozen_weights": static["frozen_weights"], "adapter_weights": static["adapter_weights"],
                 "gradients": g, "optimizer_states": static["optimizer_states"],
                 "activations": acts, "logits": lg, "overhead": WORKSPACE_BYTES + tr}
    return MemoryEstimate(totals[peak], breakdown, peak, totals)


# --- full fine-tuning (the reference beside the LoRA rows) -------------------------------------------
def full_param_count(info: ModelInfo) -> int:
    """Trainable parameters of full fine-tuning: every parameter of the model (tied weights once)."""
    return int(info.total_params)


def estimate_full_memory(info: ModelInfo, *, batch_size: int = 1, seq_len: int = 512, dtype: str = "bf16",
                         gradient_checkpointing: bool = False, attn_implementation: str = "sdpa",
                         optim_dtype: str = "fp32") -> MemoryEstimate:
    r"""Peak ``max_memory_allocated`` of one full fine-tuning step: the loop of the module docstring with
    every parameter trainable, fp32 master weights and ``dtype`` the autocast compute dtype (bf16/fp16;
    'fp32': no autocast). N = total parameters, M = B·T tokens.

    Static: weights 4·N, AdamW states 2·N·bytes(optim_dtype) (exp_avg + exp_avg_sq), cuBLAS workspaces.
    Saved for backward: every layer from its input on (the embedding needs a gradient), i.e. the LoRA
    table of ``activations`` with each linear saving its c-byte input for its weight gradient (a LoRA
    module of rank 0), autocast's c-byte copy of every linear weight (2·N_linear, as for an fp32 base), each
    norm's fp32 normalized output for its weight gradient (4·M·h per norm), the head's input (c·M·h).
    Peak moments: ``backward_start`` (all saved + 12·M·V of the loss + the head's fp32 gradient 4·V·h),
    ``backward_end`` (every gradient 4·N + the first layer's saved set + the largest temporary),
    ``recompute`` (checkpointing: layer inputs + one layer + the gradients of the layers above) and
    ``optimizer_step`` (gradients 4·N + foreach AdamW's ``sqrt(exp_avg_sq)`` buffer, N·bytes(optim_dtype)).
    """
    check_memory_args(batch_size, seq_len, dtype, "none", attn_implementation)
    dtype = DTYPE_ALIASES[dtype]
    if optim_dtype not in DTYPE_ALIASES:
        raise LoradialError(f"unknown optimizer dtype {optim_dtype!r}", f"use one of {', '.join(DTYPE_BYTES)}")
    ob = DTYPE_BYTES[DTYPE_ALIASES[optim_dtype]]
    s = model_shape(info)
    T, M = seq_len, batch_size * seq_len
    autocast = dtype != "fp32"
    c = 2 if autocast else 4
    N = full_param_count(info)
    layer, outside, a, pseudo = full_saved_activations(info, batch_size=batch_size, seq_len=seq_len, dtype=dtype,
                                                       attn_implementation=attn_implementation)
    static = {"weights": 4 * N, "optimizer_states": 2 * ob * N}
    grads = 4 * N
    head_grad = 4 * s.vocab * s.hidden
    logits = logits_bytes(M, s.vocab)
    transient = backward_transient(s, [], batch_size, T, attn_implementation, "none", False, info, c)
    transient = max(transient, (4 + c) * M * max((m.d_in for m, _ in pseudo if m.kind != "embedding"), default=0))
    phases: dict[str, tuple[int, int, int, int]] = {}
    if not gradient_checkpointing:
        phases["backward_start"] = (head_grad, sum(layer) + outside, logits, max(0, transient - logits))
        phases["backward_end"] = (grads, (layer[0] if layer else 0) + a.lora_outside, 0, transient)
    else:
        c_res = 4  # fp32 weights: the residual stream is fp32
        inputs = s.layers * c_res * M * s.hidden
        phases["backward_start"] = (head_grad, inputs + outside, logits, 0)
        one = max(layer, default=0)
        phases["recompute"] = max((0, inputs + one + outside, 0, transient),
                                  (grads, c_res * M * s.hidden + one + a.lora_outside, 0, transient), key=sum)
    phases["optimizer_step"] = (grads, 0, 0, ob * N)
    base = sum(static.values()) + WORKSPACE_BYTES
    totals = {name: base + sum(v) for name, v in phases.items()}
    peak = max(totals, key=totals.get)
    g, acts, lg, tr = phases[peak]
    breakdown = {"weights": static["weights"], "gradients": g, "optimizer_states": static["optimizer_states"],
                 "activations": acts, "logits": lg, "overhead": WORKSPACE_BYTES + tr}
    return MemoryEstimate(totals[peak], breakdown, peak, totals)


def full_saved_activations(info: ModelInfo, *, batch_size: int = 1, seq_len: int = 512, dtype: str = "bf16",
                           attn_implementation: str = "sdpa"):
    """What the forward of a full fine-tuning step saves for backward (logits and loss excluded):
    (bytes per layer, bytes outside the layers, the ``SavedActivations``, the rank-0 pseudo targets).

    Every linear (but the head) and the input embedding count as a rank-0 LoRA module of ``saved_activations``
    (each linear keeps its c-byte input for its weight gradient, the embedding its int64 ids); with autocast
    (``dtype`` bf16/fp16 over fp32 weights) each linear also keeps a c-byte copy of its weight, as for an fp32
    base; each norm keeps its fp32 normalized output for its weight gradient (4·M·h; q/k norms c·M·(q + kv));
    the head its input. Checked against the tensors autograd saves on CPU (tests/test_full_ft.py)."""
    dtype = DTYPE_ALIASES.get(dtype, dtype)
    autocast = dtype != "fp32"
    c = 2 if autocast else 4
    s = model_shape(info)
    M = batch_size * seq_len
    pseudo = [(m, 0) for m in info.modules if (m.kind in LINEAR_KINDS and not m.is_output_head) or m.kind == "embedding"]
    if not pseudo:
        raise LoradialError(f"{info.name} has no linear layer the memory model knows", "check the model's config")
    # dtype='fp32' in saved_activations = an fp32 weight under autocast: it adds the c-byte weight copies
    a = saved_activations(info, pseudo, batch_size=batch_size, seq_len=seq_len, dtype="fp32" if autocast else "bf16",
                          attn_implementation=attn_implementation, c=c)
    norm_out = 4 * M * s.hidden
    qk = c * M * (s.heads + s.kv_heads) * s.head_dim if s.qk_norm else 0  # q/k norms: their c-byte normalized input
    layer = [a.layer(i) + s.norms_per_layer * norm_out + qk for i in range(s.layers)]
    outside = a.lora_outside + a.head_saved + c * M * s.hidden + norm_out
    return layer, outside, a, pseudo
