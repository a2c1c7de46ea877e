"""Module shapes straight from config.json, without torch: the fast path of ``models.inspect_model``.

For the families bundled in ``loradial/configs`` this lists exactly what transformers 5 builds on the
meta device (names, kinds, PEFT-oriented shapes, biases, output head, tied embeddings, every other
submodule name, and the total parameter count) — a test checks equality with the meta build for
every bundled config. Defaults for missing keys are those of each family's transformers config
class. Anything this file is unsure about returns None, and the caller builds on the meta device.

    decoder layer (llama-style)  q: H -> nh*hd, k, v: H -> nkv*hd, o: nh*hd -> H; gate, up: H -> I, down: I -> H
    MoE (Mixtral / Qwen-MoE)     router weight (E, H); experts gate_up_proj (E, 2*I_e, H), down_proj (E, H, I_e)
"""

from __future__ import annotations

from typing import Any, Callable

from loradial.models.info import ModelInfo, ModuleInfo

_MISSING = object()


class _Tree:
    """Collects modules in construction order, counting parameters as they are added."""

    def __init__(self) -> None:
        self.modules: list[ModuleInfo] = []
        self.other: list[str] = []
        self.total = 0
        self.resolved: dict[str, Any] = {}  # config fields as the transformers config class resolves them

    def linear(self, name: str, d_in: int, d_out: int, bias: bool = False, head: bool = False, tied: bool = False) -> None:
        self.modules.append(ModuleInfo(name, "linear", d_in, d_out, bias, head))
        self.total += (0 if tied else d_in * d_out) + (d_out if bias else 0)

    def conv1d(self, name: str, d_in: int, d_out: int) -> None:  # GPT-2 Conv1D, always with bias
        self.modules.append(ModuleInfo(name, "conv1d", d_in, d_out, True))
        self.total += d_in * d_out + d_out

    def embedding(self, name: str, n: int, d: int) -> None:
        self.modules.append(ModuleInfo(name, "embedding", n, d))
        self.total += n * d

    def conv(self, name: str, c_in: int, c_out: int, kernel: int) -> None:
        self.modules.append(ModuleInfo(name, "conv", c_in * kernel, c_out, True))
        self.total += c_in * c_out * kernel + c_out

    def param(self, name: str, d_in: int, d_out: int, experts: int = 1) -> None:
        self.modules.append(ModuleInfo(name, "param", d_in, d_out, False, False, experts))
        self.total += experts * d_in * d_out

    def leaf(self, name: str, params: int = 0) -> None:
        """A submodule LoRA cannot wrap (norm, activation, dropout, rotary embedding...)."""
        self.other.append(name)
        self.total += params

    def other_modules(self) -> list[str]:
        """Every non-wrappable module name: the leaves plus all containers (every proper name prefix)."""
        wrappable = {m.name for m in self.modules if m.kind != "param"}
        out: dict[str, None] = {}
        names = [m.name for m in self.modules] + self.other
        for name in names:
            parts = name.split(".")
            for i in range(1, len(parts)):
                out.setdefault(".".join(parts[:i]), None)
        for name in self.other:
            out.setdefault(name, None)
        return [n for n in out if n not in wrappable]


def _get(cfg: dict[str, Any], key: str, default: Any = _MISSING) -> Any:
    value = cfg.get(key, default)
    if value is _MISSING or value is None:
        raise _Unsure(key)
    return value


class _Unsure(Exception):
    """The config leaves something this module does not model: use the meta build."""


# --- llama-style decoders ---------------------------------------------------------------------------
# per model_type: defaults of num_key_value_heads ("heads" = num_attention_heads), head_dim (None =
# hidden/heads), tie_word_embeddings; attention biases (q, k, v, o) as a function of the config
_DECODERS: dict[str, dict[str, Any]] = {
    "llama": dict(kv="heads", head_dim=None, tie=False),
    "mistral": dict(kv=8, head_dim=None, tie=False),
    "mixtral": dict(kv=8, head_dim=None, tie=False),
    "qwen2": dict(kv=32, head_dim=None, tie=False),
    "qwen2_moe": dict(kv=16, head_dim=None, tie=False),
    "qwen3": dict(kv=32, head_dim=128, tie=False),
    "qwen3_moe": dict(kv=4, head_dim=None, tie=False),
    "gemma": dict(kv=16, head_dim=256, tie=True),
    "gemma2": dict(kv=4, head_dim=256, tie=True),
    "phi3": dict(kv="heads", head_dim=None, tie=False),
}
_CAUSAL_LM = {
    "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "mixtral": "MixtralForCausalLM",
    "qwen2": "Qwen2ForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM", "qwen3": "Qwen3ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM", "gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM",
    "phi3": "Phi3ForCausalLM",
}


def _attn_biases(mt: str, cfg: dict[str, Any]) -> tuple[bool, bool]:
    """(q/k/v bias, o bias) as each family's attention module sets them."""
    if mt == "llama" or mt in ("qwen3", "qwen3_moe", "gemma", "gemma2"):
        b = bool(cfg.get("attention_bias") or False)
        return b, b
    if mt == "qwen2":
        return True, False
    if mt == "qwen2_moe":
        return bool(cfg.get("qkv_bias", True)), False
    return False, False  # mistral, mixtral, phi3


def _decoder(cfg: dict[str, Any], tree: _Tree) -> bool:
    mt = cfg["model_type"]
    d = _DECODERS[mt]
    hidden, inter = _get(cfg, "hidden_size"), _get(cfg, "intermediate_size")
    layers, heads, vocab = _get(cfg, "num_hidden_layers"), _get(cfg, "num_attention_heads"), _get(cfg, "vocab_size")
    kv = _get(cfg, "num_key_value_heads", heads if d["kv"] == "heads" else d["kv"])
    hd = _get(cfg, "head_dim", hidden // heads if d["head_dim"] is None else d["head_dim"])
    tied = bool(cfg.get("tie_word_embeddings", d["tie"]))
    qkv_bias, o_bias = _attn_biases(mt, cfg)
    mlp_bias = bool(cfg.get("mlp_bias") or False) if mt == "llama" else False
    tree.resolved.update(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
                         vocab_size=vocab, num_key_value_heads=kv, head_dim=hd, tie_word_embeddings=tied,
                         **{"hidden_activation" if mt == "gemma2" else "hidden_act": "gelu_pytorch_tanh" if mt.startswith("gemma") else "silu"})

    tree.embedding("model.embed_tokens", vocab, hidden)
    for i in range(layers):
        p = f"model.layers.{i}"
        if mt == "phi3":
            tree.linear(f"{p}.self_attn.o_proj", heads * hd, hidden)
            tree.linear(f"{p}.self_attn.qkv_proj", hidden, heads * hd + 2 * kv * hd)
        else:
            tree.linear(f"{p}.self_attn.q_proj", hidden, heads * hd, qkv_bias)
            tree.linear(f"{p}.self_attn.k_proj", hidden, kv * hd, qkv_bias)
            tree.linear(f"{p}.self_attn.v_proj", hidden, kv * hd, qkv_bias)
            tree.linear(f"{p}.self_attn.o_proj", heads * hd, hidden, o_bias)
        if mt in ("qwen3", "qwen3_moe"):
            tree.leaf(f"{p}.self_attn.q_norm", hd)
            tree.leaf(f"{p}.self_attn.k_norm", hd)
        _decoder_mlp(mt, cfg, tree, i, f"{p}.mlp", hidden, inter, mlp_bias)
        norms = ["input_layernorm", "post_attention_layernorm"]
        if mt == "gemma2":
            norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
        for n in norms:
            tree.leaf(f"{p}.{n}", hidden)
        if mt == "phi3":
            tree.leaf(f"{p}.resid_attn_dropout")
            tree.leaf(f"{p}.resid_mlp_dropout")
    tree.leaf("model.norm", hidden)
    tree.leaf("model.rotary_emb")
    tree.linear("lm_head", hidden, vocab, head=True, tied=tied)
    return tied


def _decoder_mlp(mt: str, cfg: dict[str, Any], tree: _Tree, i: int, p: str, hidden: int, inter: int, bias: bool) -> None:
    def dense(prefix: str, size: int, b: bool = False) -> None:
        tree.linear(f"{prefix}.gate_proj", hidden, size, b)
        tree.linear(f"{prefix}.up_proj", hidden, size, b)
        tree.linear(f"{prefix}.down_proj", size, hidden, b)
        tree.leaf(f"{prefix}.act_fn")

    def experts(n: int, size: int) -> None:
        tree.param(f"{p}.experts.gate_up_proj", hidden, 2 * size, n)
        tree.param(f"{p}.experts.down_proj", size, hidden, n)
        tree.leaf(f"{p}.experts.act_fn")

    def router(n: int) -> None:
        tree.leaf(f"{p}.gate")
        tree.param(f"{p}.gate.weight", hidden, n)

    if mt == "phi3":
        tree.linear(f"{p}.gate_up_proj", hidden, 2 * inter)
        tree.linear(f"{p}.down_proj", inter, hidden)
        tree.leaf(f"{p}.activation_fn")
    elif mt == "mixtral":
        n = _get(cfg, "num_local_experts", 8)
        tree.resolved.update(num_local_experts=n, num_experts_per_tok=_get(cfg, "num_experts_per_tok", 2))
        router(n)
        experts(n, inter)
    elif mt in ("qwen2_moe", "qwen3_moe"):
        n = _get(cfg, "num_experts", 60 if mt == "qwen2_moe" else 128)
        step, only = _get(cfg, "decoder_sparse_step", 1), _get(cfg, "mlp_only_layers", [])
        size = _get(cfg, "moe_intermediate_size", 1408 if mt == "qwen2_moe" else 768)
        tree.resolved.update(num_experts=n, num_experts_per_tok=_get(cfg, "num_experts_per_tok", 4 if mt == "qwen2_moe" else 8),
                             moe_intermediate_size=size, decoder_sparse_step=step, mlp_only_layers=only)
        if mt == "qwen2_moe":
            tree.resolved["shared_expert_intermediate_size"] = _get(cfg, "shared_expert_intermediate_size", 5632)
        if i in only or not (n > 0 and (i + 1) % step == 0):
            dense(p, inter)
            return
        if mt == "qwen2_moe":
            router(n)
            experts(n, size)
            dense(f"{p}.shared_expert", tree.resolved["shared_expert_intermediate_size"])
            tree.linear(f"{p}.shared_expert_gate", hidden, 1)
        else:
            experts(n, size)
            router(n)
    else:
        dense(p, inter, bias)


# --- GPT-2 ------------------------------------------------------------------------------------------
def _gpt2(cfg: dict[str, Any], tree: _Tree) -> bool:
    if cfg.get("add_cross_attention"):
        raise _Unsure("add_cross_attention")
    h = _get(cfg, "n_embd", cfg.get("hidden_size", 768))
    layers, vocab, pos = _get(cfg, "n_layer", 12), _get(cfg, "vocab_size", 50257), _get(cfg, "n_positions", 1024)
    inner = cfg.get("n_inner") or 4 * h
    tied = bool(cfg.get("tie_word_embeddings", True))
    tree.resolved.update(n_embd=h, n_layer=layers, n_head=_get(cfg, "n_head", 12), vocab_size=vocab, n_positions=pos,
                         n_inner=None, activation_function="gelu_new", tie_word_embeddings=tied)
    tree.embedding("transformer.wte", vocab, h)
    tree.embedding("transformer.wpe", pos, h)
    tree.leaf("transformer.drop")
    for i in range(layers):
        p = f"transformer.h.{i}"
        tree.leaf(f"{p}.ln_1", 2 * h)
        tree.conv1d(f"{p}.attn.c_attn", h, 3 * h)
        tree.conv1d(f"{p}.attn.c_proj", h, h)
        tree.leaf(f"{p}.attn.attn_dropout")
        tree.leaf(f"{p}.attn.resid_dropout")
        tree.leaf(f"{p}.ln_2", 2 * h)
        tree.conv1d(f"{p}.mlp.c_fc", h, inner)
        tree.conv1d(f"{p}.mlp.c_proj", inner, h)
        tree.leaf(f"{p}.mlp.act")
        tree.leaf(f"{p}.mlp.dropout")
    tree.leaf("transformer.ln_f", 2 * h)
    tree.linear("lm_head", h, vocab, head=True, tied=tied)
    return tied


# --- BERT-style encoders ----------------------------------------------------------------------------
def _roberta(cfg: dict[str, Any], tree: _Tree) -> bool:
    if cfg.get("add_cross_attention") or cfg.get("is_decoder") or cfg.get("position_embedding_type", "absolute") != "absolute":
        raise _Unsure("roberta variant")
    h, inter = _get(cfg, "hidden_size", 768), _get(cfg, "intermediate_size", 3072)
    layers, vocab = _get(cfg, "num_hidden_layers", 12), _get(cfg, "vocab_size", 50265)
    types, pos = _get(cfg, "type_vocab_size", 2), _get(cfg, "max_position_embeddings", 512)
    tied = bool(cfg.get("tie_word_embeddings", True))
    tree.resolved.update(hidden_size=h, intermediate_size=inter, num_hidden_layers=layers, vocab_size=vocab, hidden_act="gelu",
                         num_attention_heads=_get(cfg, "num_attention_heads", 12), type_vocab_size=types,
                         max_position_embeddings=pos, tie_word_embeddings=tied)
    e = "roberta.embeddings"
    tree.embedding(f"{e}.word_embeddings", vocab, h)
    tree.embedding(f"{e}.token_type_embeddings", types, h)
    tree.leaf(f"{e}.LayerNorm", 2 * h)
    tree.leaf(f"{e}.dropout")
    tree.embedding(f"{e}.position_embeddings", pos, h)
    for i in range(layers):
        p = f"roberta.encoder.layer.{i}"
        for n in ("query", "key", "value"):
            tree.linear(f"{p}.attention.self.{n}", h, h, True)
        tree.leaf(f"{p}.attention.self.dropout")
        _bert_tail(tree, p, h, inter)
    tree.linear("lm_head.dense", h, h, True)
    tree.leaf("lm_head.layer_norm", 2 * h)
    tree.linear("lm_head.decoder", h, vocab, bias=True, head=True, tied=tied)
    return tied


def _bert_tail(tree: _Tree, p: str, h: int, inter: int) -> None:
    """attention.output (dense + LayerNorm + dropout), intermediate, output: shared by RoBERTa and DeBERTa-v2."""
    tree.linear(f"{p}.attention.output.dense", h, h, True)
    tree.leaf(f"{p}.attention.output.LayerNorm", 2 * h)
    tree.leaf(f"{p}.attention.output.dropout")
    tree.linear(f"{p}.intermediate.dense", h, inter, True)
    tree.leaf(f"{p}.intermediate.intermediate_act_fn")
    tree.linear(f"{p}.output.dense", inter, h, True)
    tree.leaf(f"{p}.output.LayerNorm", 2 * h)
    tree.leaf(f"{p}.output.dropout")


def _deberta_v2(cfg: dict[str, Any], tree: _Tree) -> bool:
    h, inter = _get(cfg, "hidden_size", 1536), _get(cfg, "intermediate_size", 6144)
    layers, vocab, heads = _get(cfg, "num_hidden_layers", 24), _get(cfg, "vocab_size", 128100), _get(cfg, "num_attention_heads", 24)
    max_pos, types = _get(cfg, "max_position_embeddings", 512), _get(cfg, "type_vocab_size", 0)
    emb = _get(cfg, "embedding_size", h)
    all_head = heads * _get(cfg, "attention_head_size", h // heads)
    if all_head != h:
        raise _Unsure("attention_head_size")  # attention.output.dense is H -> H in transformers
    rel = bool(cfg.get("relative_attention", False))
    pos_att = cfg.get("pos_att_type") or []
    pos_att = [x.strip() for x in pos_att.lower().split("|")] if isinstance(pos_att, str) else list(pos_att)
    tree.resolved.update(hidden_size=h, intermediate_size=inter, num_hidden_layers=layers, vocab_size=vocab, hidden_act="gelu",
                         num_attention_heads=heads, max_position_embeddings=max_pos, type_vocab_size=types)
    tree.embedding("embeddings.word_embeddings", vocab, emb)
    if cfg.get("position_biased_input", True):
        tree.embedding("embeddings.position_embeddings", max_pos, emb)
    if types > 0:
        tree.embedding("embeddings.token_type_embeddings", types, emb)
    if emb != h:
        tree.linear("embeddings.embed_proj", emb, h)
    tree.leaf("embeddings.LayerNorm", 2 * h)
    tree.leaf("embeddings.dropout")
    for i in range(layers):
        p = f"encoder.layer.{i}"
        for n in ("query_proj", "key_proj", "value_proj"):
            tree.linear(f"{p}.attention.self.{n}", h, all_head, True)
        if rel:
            if not cfg.get("share_att_key", False):
                if "c2p" in pos_att:
                    tree.linear(f"{p}.attention.self.pos_key_proj", h, all_head, True)
                if "p2c" in pos_att:
                    tree.linear(f"{p}.attention.self.pos_query_proj", h, all_head, True)
            tree.leaf(f"{p}.attention.self.pos_dropout")
        tree.leaf(f"{p}.attention.self.dropout")
        _bert_tail(tree, p, h, inter)
    if rel:
        max_rel = cfg.get("max_relative_positions", -1)
        max_rel = max_pos if max_rel < 1 else max_rel
        buckets = cfg.get("position_buckets", -1)
        tree.embedding("encoder.rel_embeddings", 2 * (buckets if buckets > 0 else max_rel), h)
    if "layer_norm" in [x.strip() for x in str(cfg.get("norm_rel_ebd", "none")).lower().split("|")]:
        tree.leaf("encoder.LayerNorm", 2 * h)
    k = cfg.get("conv_kernel_size", 0)
    if k > 0:
        if cfg.get("conv_groups", 1) != 1:
            raise _Unsure("conv_groups")
        tree.conv("encoder.conv.conv", h, h, k)
        tree.leaf("encoder.conv.LayerNorm", 2 * h)
        tree.leaf("encoder.conv.dropout")
    return bool(cfg.get("tie_word_embeddings", True))


# model_type -> (builder, accepted `architectures` entries, class name used when absent; None = must be given)
_FAMILIES: dict[str, tuple[Callable[[dict[str, Any], _Tree], bool], tuple[str, ...], str | None]] = {
    **{mt: (_decoder, (cls,), cls) for mt, cls in _CAUSAL_LM.items()},
    "gpt2": (_gpt2, ("GPT2LMHeadModel",), "GPT2LMHeadModel"),
    "roberta": (_roberta, ("RobertaForMaskedLM",), None),
    "deberta-v2": (_deberta_v2, ("DebertaV2Model",), "DebertaV2Model"),
}

FAST_MODEL_TYPES = tuple(_FAMILIES)


def model_info(name: str, source: str, cfg: dict[str, Any]) -> ModelInfo | None:
    """ModelInfo computed from the config alone, or None when the meta build must decide."""
    family = _FAMILIES.get(cfg.get("model_type"))
    if family is None:
        return None
    build, accepted, default_cls = family
    archs = cfg.get("architectures") or []
    cls = archs[0] if archs else default_cls
    if cls not in accepted or any(a != cls for a in archs[1:]):
        return None
    tree = _Tree()
    try:
        tied = build(cfg, tree)
    except (_Unsure, TypeError, ValueError, KeyError, AttributeError, ZeroDivisionError):
        return None
    defaults = {k: v for k, v in tree.resolved.items() if k not in cfg}
    return ModelInfo(name, source, cfg, tree.modules, tree.total, tied, tree.other_modules(), cls, "shapes", defaults)
