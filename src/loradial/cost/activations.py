r"""What the forward of one LoRA training step saves for backward, per layer, from the shapes alone.

Part of ``loradial.memory``'s model (its docstring has the loop, the notation and the peak moments);
notation: M = K·B·T tokens, h hidden, I intermediate, n_h / n_kv heads, d_h head dim, q = n_h·d_h,
kv = n_kv·d_h, c = 2 bytes (autocast compute dtype).

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
"""

from __future__ import annotations

import dataclasses
from typing import Any

from loradial.errors import LoradialError
from loradial.models.info import LINEAR_KINDS, ModelInfo, ModuleInfo
from loradial.models.targets import module_category
from loradial.spec import layer_index

_LAYERNORM_TYPES = {"gpt2", "gpt_neo", "gptj", "gpt_neox", "opt", "bloom", "falcon", "phi", "bert",
                    "roberta", "xlm-roberta", "deberta", "deberta-v2", "distilbert", "electra", "gpt_bigcode"}
_NON_GATED_TYPES = _LAYERNORM_TYPES | {"starcoder2"}
_FOUR_NORM_TYPES = {"gemma2", "gemma3", "gemma3_text"}
_QK_NORM_TYPES = {"qwen3", "qwen3_moe", "gemma3", "gemma3_text", "olmo2", "olmoe"}
_ATTN_OUT = {"o_proj", "out_proj", "c_proj", "wo", "o", "dense"}
_MLP_OUT = {"down_proj", "c_proj", "fc2", "w2", "wo", "dense", "down", "fc_out", "dense_4h_to_h"}
#: Over a quantized base, sibling modules that read one tensor (measured: Llama-family names only;
#: other families count one input copy per module, which can only overestimate).
_SAME_INPUT = {"q_proj": "attn_in", "k_proj": "attn_in", "v_proj": "attn_in", "gate_proj": "mlp_in", "up_proj": "mlp_in"}


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
            from loradial.models.resolve import to_pretrained_config

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


def shares_input(m: ModuleInfo, seen: set, attn: str, sdpa_saves_output: bool = True) -> bool:
    """Over a quantized base (no fp32 cast, see the module docstring): is lora_A's saved input already
    saved — by an earlier sibling reading the same tensor (q/k/v_proj, gate/up_proj of one parent), or
    by SDPA (o_proj; ``sdpa_saves_output`` is False where attention needs no gradient)?"""
    parent, _, last = m.name.rpartition(".")
    if m.kind not in ("linear", "conv1d") or layer_index(m.name) is None:
        return False
    if last == "o_proj":
        return attn != "eager" and sdpa_saves_output
    group = _SAME_INPUT.get(last)
    if group is None:
        return False
    key = (parent, group, m.d_in)
    if key in seen:
        return True
    seen.add(key)
    return False


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
        sdpa_out = not (li == first and first_stage == 2)  # attention needs no gradient in that layer
        copy = not (share and shares_input(m, seen, attn_implementation, sdpa_out))
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
