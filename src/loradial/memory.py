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

Saved for backward, per decoder layer (transformers 5.17 ``modeling_llama.py`` under bf16 autocast;
frozen linears save only their weight, ``mm`` saves an input only for a weight that needs a grad):

    =============================  ===============  =================================================
    tensor                         bytes            saved by
    =============================  ===============  =================================================
    fp32 copy of layer input       4·M·h            input_layernorm (``hidden_states.to(float32)``)
    rsqrt(variance + eps)          4·M              input_layernorm
    q, k after RoPE; v             c·M·(q + 2·kv)   SDPA / flash (k, v not repeated: ``enable_gqa``)
    attention output               c·M·q            SDPA / flash
    logsumexp                      4·K·B·n_h·T      SDPA / flash (fp32)
    fp32 copy + rsqrt              4·M·h + 4·M      post_attention_layernorm
    gate_proj out, act(gate), up   3·c·M·I          SiLU (its input), ``act * up`` (both operands)
    per LoRA module: input copy    c·M·d_in         lora_A (PEFT casts x to fp32, autocast back to bf16)
    per LoRA module: A·x           c·M·r            lora_B
    bf16 copies of A and B         c·K·r·(d_in+d_out)  the linears (autocast's weight cache)
    =============================  ===============  =================================================

Not saved: the normed inputs, q/k/v before RoPE, the MLP product, the residual stream. ``eager``
attention keeps instead k and v repeated to n_h heads and the T×T probabilities twice (fp32 softmax
output and its bf16 cast): 4·K·B·n_h·T² + c·K·B·n_h·T², plus one c·K·B·T² mask. LayerNorm models save
4·M·h + 8·M per norm; Gemma-2/3 have 4 norms per layer; Qwen3/Gemma-3 q/k norms add 4·M·(q + kv).
DoRA adds 2·c·M·d_out per module (base and LoRA outputs, for the magnitude's gradient).
``lora_dropout`` > 0 adds dropout's mask, M·d_in bytes per linear LoRA module (CUDA's ``native_dropout``
saves a bool mask; the dropped fp32 input itself is not saved). DoRA with dropout leaves PEFT's fast
path (the base output is recomputed from the dropped input) and is not modelled. Over a bitsandbytes
base (``quant``) PEFT's LoRA layers do not cast x to fp32 under autocast, so lora_A saves x itself:
modules reading the same input share one copy (q/k/v; gate/up), and o_proj's input is SDPA's saved
output (with flash / memory-efficient SDPA; not with eager) — unless dropout makes a copy per module.
Layers before
the first targeted one save nothing (nothing there needs a gradient). With an fp32 base under bf16
autocast every frozen linear past that point also saves a bf16 copy of its weight (2 bytes/param).

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
from typing import Any

from .errors import LoradialError
from .models import LINEAR_KINDS, ModelInfo, ModuleInfo, module_category
from .result import Result
from .spec import layer_index

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
QUANTS = ("none", "8bit", "4bit")
ATTENTION = ("sdpa", "flash_attention_2", "flash_attention_3", "eager")
#: cuBLAS workspaces live in PyTorch's caching allocator, so they count in max_memory_allocated: one
#: per (handle, stream), 32 MiB each on Hopper (``CUBLAS_WORKSPACE_CONFIG`` default ":4096:8"), one
#: handle for the forward thread and one for autograd's device thread. (On the H100 the memory
#: allocated before a step exceeded the static estimate without this term by 0.06-0.14 GiB.)
WORKSPACE_BYTES = 2 * 32 * 2**20
NF4_BLOCK = 64        # bitsandbytes quantize_4bit blocksize
NF4_BLOCK2 = 256      # double quantization: quantize_blockwise(absmax - offset, blocksize=256)

_LAYERNORM_TYPES = {"gpt2", "gpt_neo", "gptj", "gpt_neox", "opt", "bloom", "falcon", "phi", "bert",
                    "roberta", "xlm-roberta", "deberta", "deberta-v2", "distilbert", "electra", "gpt_bigcode"}
_NON_GATED_TYPES = _LAYERNORM_TYPES | {"starcoder2"}
_FOUR_NORM_TYPES = {"gemma2", "gemma3", "gemma3_text"}
_QK_NORM_TYPES = {"qwen3", "qwen3_moe", "gemma3", "gemma3_text", "olmo2", "olmoe"}
_ATTN_OUT = {"o_proj", "out_proj", "c_proj", "wo", "o", "dense"}
_MLP_OUT = {"down_proj", "c_proj", "fc2", "w2", "wo", "dense", "down"}


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
    from .cost import trainable_params

    return trainable_params(targeted, use_dora)


# --- shapes ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Shape:
    """The config fields the activation model needs (with the fallbacks of non-Llama families)."""

    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    gated: bool = True
    act_saved: int = 1          # (I-sized tensors saved by a non-gated activation; gelu_new: 4)
    layer_norm: bool = False
    norms_per_layer: int = 2
    qk_norm: bool = False
    n_experts: int = 0
    experts_per_tok: int = 0
    moe_intermediate: int = 0
    shared_intermediate: int = 0


def _get(cfg: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        v = cfg.get(n) if isinstance(cfg, dict) else getattr(cfg, n, None)
        if v is not None:
            return v
    return default


def model_shape(info: ModelInfo) -> Shape:
    """Read hidden/intermediate/layers/heads/vocab from the config with transformers' defaults filled
    in (Qwen3's head_dim=128, GPT-2's n_inner=4h), for GPT-2, BERT and MoE field names too."""
    if info.built_by == "shapes":  # torch-free fast path: shapes.py filled in the class defaults (plan.py: < 2 s)
        cfg: Any = info.full_config()
    else:
        try:
            from .models import to_pretrained_config

            full = to_pretrained_config(info.config)
            cfg = full.get_text_config() if hasattr(full, "get_text_config") else full
        except Exception:  # unknown model_type: the raw dict, with its text_config if nested
            cfg = info.config.get("text_config") if isinstance(info.config.get("text_config"), dict) else info.config
    mt = str(_get(cfg, "model_type", default=info.model_type))
    hidden = _get(cfg, "hidden_size", "n_embd", "d_model", "dim")
    layers = _get(cfg, "num_hidden_layers", "n_layer", "num_layers", "n_layers")
    heads = _get(cfg, "num_attention_heads", "n_head", "num_heads", "n_heads")
    vocab = _get(cfg, "vocab_size")
    if not all(isinstance(v, int) and v > 0 for v in (hidden, layers, heads, vocab)):
        raise LoradialError(f"config of {info.name} lacks hidden size / layers / heads / vocab size",
                            "the memory estimate needs hidden_size, num_hidden_layers, num_attention_heads, vocab_size")
    kv = _get(cfg, "num_key_value_heads", "num_kv_heads", "n_head_kv", default=heads)
    head_dim = _get(cfg, "head_dim", default=hidden // heads)
    inter = _get(cfg, "intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size")
    if not inter:
        mlp = [m.d_out for m in info.modules if m.kind in LINEAR_KINDS and module_category(m.name) == "mlp"]
        inter = max(mlp) if mlp else 4 * hidden
    n_exp = _get(cfg, "num_local_experts", "num_experts", "n_routed_experts", default=0) or 0
    top_k = _get(cfg, "num_experts_per_tok", "moe_top_k", default=0) or 0
    moe_inter = _get(cfg, "moe_intermediate_size", default=inter) if n_exp else 0
    shared = _get(cfg, "shared_expert_intermediate_size", default=0) or 0
    if not shared and _get(cfg, "n_shared_experts"):
        shared = int(_get(cfg, "n_shared_experts")) * moe_inter
    act = str(_get(cfg, "activation_function", "hidden_act", "hidden_activation", default="silu"))
    gated = mt not in _NON_GATED_TYPES
    return Shape(mt, int(hidden), int(inter), int(layers), int(heads), int(kv), int(head_dim), int(vocab),
                 gated=gated, act_saved=4 if act == "gelu_new" and not gated else 1,
                 layer_norm=mt in _LAYERNORM_TYPES, norms_per_layer=4 if mt in _FOUR_NORM_TYPES else 2,
                 qk_norm=mt in _QK_NORM_TYPES, n_experts=int(n_exp), experts_per_tok=int(top_k),
                 moe_intermediate=int(moe_inter), shared_intermediate=int(shared))


# --- activations ------------------------------------------------------------------------------------
def module_stage(m: ModuleInfo) -> int:
    """Where in a layer gradients start if this is its first LoRA module:
    1 attention input (q/k/v), 2 attention output, 3 MLP input (gate/up), 4 MLP output (down)."""
    cat, last = module_category(m.name), m.name.rsplit(".", 1)[-1]
    if cat == "attention":
        return 2 if last in _ATTN_OUT else 1
    if cat == "mlp":
        return 4 if last in _MLP_OUT and ".intermediate." not in m.name else 3
    return 1


def norm_saved(s: Shape, M: int) -> int:
    """One norm: fp32 copy of its input (4·M·h) + rsqrt (4·M), or LayerNorm's mean/rstd (8·M)."""
    return 4 * M * s.hidden + (8 if s.layer_norm else 4) * M


def attention_saved(s: Shape, Bt: int, T: int, attn: str, c: int = 2) -> int:
    """Bytes attention keeps for backward. sdpa/flash: q, k, v, out (c bytes) + fp32 logsumexp;
    eager: q, k and v repeated to n_h heads, fp32 softmax output and its c-byte cast (T×T)."""
    M, q, kv = Bt * T, s.heads * s.head_dim, s.kv_heads * s.head_dim
    qk_norm = 4 * M * (q + kv) + 4 * M * (s.heads + s.kv_heads) if s.qk_norm else 0
    if attn == "eager":
        kv_rep = q if s.kv_heads != s.heads else kv
        probs = Bt * s.heads * T * T * (4 + (c if c != 4 else 0))
        return c * M * (q + 2 * kv_rep) + probs + qk_norm
    return c * M * (2 * q + 2 * kv) + 4 * Bt * s.heads * T + qk_norm


def mlp_saved(s: Shape, M: int, c: int = 2) -> int:
    """Gated MLP: act input, act output, up output (3·c·M·I); non-gated: the activation's saved set;
    MoE: top-k experts per token + shared experts + fp32 router probabilities and expert outputs."""
    if s.n_experts:
        k = max(s.experts_per_tok, 1)
        return (3 * c * M * k * s.moe_intermediate + 3 * c * M * s.shared_intermediate
                + c * M * k * s.hidden + 4 * M * s.n_experts * 2 + 8 * M * k)
    return (3 if s.gated else s.act_saved) * c * M * s.intermediate


def layer_saved(s: Shape, Bt: int, T: int, attn: str, stage: int = 0, c: int = 2) -> int:
    """Base-model bytes one decoder layer saves, when gradients flow from ``stage`` on
    (0: the layer input needs a gradient; 1..4: the first LoRA module's stage, see ``module_stage``)."""
    M = Bt * T
    extra_norms = (s.norms_per_layer - 2) * norm_saved(s, M)
    total = norm_saved(s, M) if stage == 0 else 0
    if stage <= 1:
        total += attention_saved(s, Bt, T, attn, c)
    if stage <= 2:
        total += norm_saved(s, M) + extra_norms
    if stage <= 3:
        total += mlp_saved(s, M, c)
    return total


def lora_saved(m: ModuleInfo, r: int, M: int, use_dora: bool = False, c: int = 2, dropout: bool = False,
               input_copy: bool = True) -> int:
    """One LoRA module: the c-byte copy of its input for lora_A (unless ``input_copy`` is False: another
    saved tensor is that input) + A·x for lora_B (c·M·(d_in + r)); DoRA: + base and LoRA outputs
    (2·c·M·d_out); dropout: + its bool mask (M·d_in); an embedding: int64 ids + A·x (8·M + c·M·r)."""
    if m.kind == "embedding":
        return 8 * M + c * M * r
    return (c * M * ((m.d_in if input_copy else 0) + r) + (2 * c * M * m.d_out if use_dora else 0)
            + (M * m.d_in if dropout else 0))


def shares_input(m: ModuleInfo, seen: set, attn: str) -> bool:
    """Over a quantized base (no fp32 cast, see the module docstring): is lora_A's saved input already
    saved — by an earlier module of the same layer reading the same tensor, or by SDPA (o_proj)?"""
    stage, li = module_stage(m), layer_index(m.name)
    if m.kind == "embedding" or li is None or stage == 4:
        return False
    if stage == 2:
        return attn != "eager"
    key = (li, stage)
    if key in seen:
        return True
    seen.add(key)
    return False


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
def _validate(batch_size, seq_len, dtype, quant, attn, n_adapters, targeted) -> None:
    for name, v in (("batch_size", batch_size), ("seq_len", seq_len), ("n_adapters", n_adapters)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise LoradialError(f"{name} must be a positive integer, got {v!r}", f"e.g. --{name.replace('_', '-')} 1")
    if dtype not in DTYPE_BYTES:
        raise LoradialError(f"unknown dtype {dtype!r}", f"use one of {', '.join(DTYPE_BYTES)}")
    if quant not in QUANTS:
        raise LoradialError(f"unknown quant {quant!r}", f"use one of {', '.join(QUANTS)}")
    if quant != "none" and dtype == "fp32":
        raise LoradialError("--quant needs a 16-bit --dtype", "bitsandbytes computes in bf16 or fp16: use --dtype bf16")
    if attn not in ATTENTION:
        raise LoradialError(f"unknown attention implementation {attn!r}", f"use one of {', '.join(ATTENTION)}")
    if not targeted:
        raise LoradialError("no targeted modules", "pass the (module, rank) pairs the targets matched")
    for m, r in targeted:
        if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
            raise LoradialError(f"rank of {m.name} must be a positive integer, got {r!r}", "e.g. --rank 16")


@dataclasses.dataclass
class SavedActivations:
    """Bytes autograd keeps for backward without checkpointing, per layer and outside the layers."""

    per_layer: list[int]          # base-model tensors (``layer_saved``)
    lora_layer: list[int]         # LoRA inputs and A·x (``lora_saved``)
    cache_layer: list[int]        # bf16 copies of A and B (autocast weight cache)
    frozen_copy_layer: list[int]  # fp32 base only: bf16 copies of the frozen weights
    lora_outside: int = 0         # LoRA on modules outside the decoder layers (embeddings, head)
    cache_outside: int = 0
    head_saved: int = 0           # final norm (+ the head's bf16 weight copy for an fp32 base)
    mask: int = 0                 # eager attention's 4-D mask

    def layer(self, i: int) -> int:
        return self.per_layer[i] + self.lora_layer[i] + self.cache_layer[i] + self.frozen_copy_layer[i]

    @property
    def total(self) -> int:
        return (sum(map(self.layer, range(len(self.per_layer)))) + self.lora_outside + self.cache_outside
                + self.head_saved + self.mask)


def saved_activations(info: ModelInfo, targeted: list[tuple[ModuleInfo, int]], *, use_dora: bool = False,
                      batch_size: int = 1, seq_len: int = 512, dtype: str = "bf16",
                      attn_implementation: str = "sdpa", n_adapters: int = 1, c: int = 2,
                      lora_dropout: float = 0.0, quant: str = "none") -> SavedActivations:
    """Everything the forward saves for backward (no checkpointing, logits/loss excluded).

    Gradients start at the first targeted layer (at its first LoRA module's stage); layers before it
    save nothing. ``c`` is the compute dtype's size (2 under bf16/fp16 autocast).
    """
    s = model_shape(info)
    Bt, T, K = n_adapters * batch_size, seq_len, n_adapters
    M = Bt * T
    idx = [(layer_index(m.name), module_stage(m), m.kind) for m, _ in targeted]
    in_layers = [(i, st) for i, st, kind in idx if i is not None and i < s.layers and kind != "embedding"]
    first = -1 if any(kind == "embedding" for _, _, kind in idx) else min((i for i, _ in in_layers), default=s.layers)
    first_stage = min((st for i, st in in_layers if i == first), default=0)
    L = s.layers
    base = [0 if i < first else layer_saved(s, Bt, T, attn_implementation, first_stage if i == first else 0, c)
            for i in range(L)]
    out = SavedActivations(base, [0] * L, [0] * L, [0] * L)
    seen: set = set()
    share = quant != "none" and lora_dropout == 0
    for m, r in targeted:
        li = layer_index(m.name)
        copy = not (share and shares_input(m, seen, attn_implementation))
        saved = lora_saved(m, r, M, use_dora, c, lora_dropout > 0, input_copy=copy)
        cache = c * K * r * (m.d_in + m.d_out)
        if li is not None and li < L and m.kind != "embedding":
            out.lora_layer[li] += saved
            out.cache_layer[li] += cache
        else:
            out.lora_outside += saved
            out.cache_outside += cache
    head_copy = 0
    if dtype == "fp32":  # bf16 autocast over an fp32 base: frozen linears save a bf16 weight copy
        for m in info.modules:
            li = layer_index(m.name)
            if m.kind not in LINEAR_KINDS or first >= L:
                continue
            if m.is_output_head or li is None:
                head_copy += 2 * m.d_in * m.d_out
            elif li > first and li < L or li == first and module_stage(m) > first_stage:  # input needs grad
                out.frozen_copy_layer[li] += 2 * m.d_in * m.d_out
    out.head_saved = norm_saved(s, M) + head_copy if first < L else 0
    out.mask = c * Bt * T * T if attn_implementation == "eager" else 0
    return out


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
