"""PEFT adapter I/O and validation: per-module factors (A, B, s) read from and written to disk.

A PEFT LoRA adapter directory holds ``adapter_config.json`` and ``adapter_model.safetensors``. For
a module ``M`` (its name in the base model, e.g. ``model.layers.0.self_attn.q_proj``) PEFT 0.21
(``peft/utils/save_and_load.py: get_peft_model_state_dict``) saves, under the prefix
``base_model.model.``::

    M.lora_A.weight          (r, d_in)      Linear and GPT-2 Conv1D (linear orientation for both)
    M.lora_B.weight          (d_out, r)
    M.lora_B.bias            (d_out,)       only with lora_bias=True
    M.lora_embedding_A       (r, num_embeddings)     nn.Embedding
    M.lora_embedding_B       (embedding_dim, r)
    M.lora_magnitude_vector  (d_out,)       DoRA (older PEFT wrote '.lora_magnitude_vector.weight')

and the module's update is ΔW = s · B · A with s = alpha / r, or alpha / sqrt(r) with use_rslora,
where r and alpha come from ``rank_pattern`` / ``alpha_pattern`` (PEFT's ``get_pattern_key`` rule,
``spec.LoraSpec``) or the global ``r`` / ``lora_alpha``. For an embedding PEFT adds (B·A)ᵀ·s to
the (num_embeddings, embedding_dim) weight; for Conv1D (fan_in_fan_out) it adds (B·A)ᵀ·s to the
(d_in, d_out) weight (``peft/tuners/lora/layer.py: get_delta_weight``).

Every other tensor is one of (``saved_tensors``): a full copy of a base parameter (``modules_to_save``,
trained base biases with ``bias='all'/'lora_only'``, saved embedding layers; PEFT strips
``.modules_to_save.<adapter>`` and ``.base_layer`` from the names), the trained rows of an embedding
(``M.token_adapter.trainable_tokens_delta``, ``trainable_token_indices``), or training-only state of a LoRA
variant (VeLoRA, MonteCLoRA); the verbs that run the model apply the first two (``evaluate.apply_saved``)
and everything is carried through resize / rescale untouched, like the other files of the directory
(README, tokenizer). Which ``LoraConfig`` fields each verb supports is ``features.FEATURES``.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path
from typing import Any

from loradial.adapters import features
from loradial.errors import LoradialError
from loradial.io import atomic_dir, check_finite, check_out_not_overlapping, read_json
from loradial.spec import LoraSpec, scaling

PREFIX = "base_model.model."
CONFIG_NAME = "adapter_config.json"
SAFETENSORS_NAME = "adapter_model.safetensors"
BIN_NAME = "adapter_model.bin"

# suffix -> (role, is_embedding)
_SUFFIXES = {
    ".lora_A.weight": ("A", False),
    ".lora_B.weight": ("B", False),
    ".lora_B.bias": ("bias", False),
    ".lora_embedding_A": ("A", True),
    ".lora_embedding_B": ("B", True),
    ".lora_magnitude_vector": ("magnitude", None),
    ".lora_magnitude_vector.weight": ("magnitude", None),
}
_FLOAT_NAMES = ("float16", "bfloat16", "float32", "float64")
TOKEN_DELTA_SUFFIX = ".token_adapter.trainable_tokens_delta"
#: tensors of LoRA variants that only matter in training (their eval forward and merge are plain LoRA's)
TRAINING_STATE_MARKERS = (".lora_velora_embed", ".lora_monteclora_sampler.")


@dataclasses.dataclass
class LoraModule:
    """One adapted module: ΔW = scale · B · A, A (r, d_in), B (d_out, r) in PEFT's linear orientation.

    ``kind`` is 'linear', 'conv1d' (GPT-2 Conv1D: the base weight is stored transposed) or
    'embedding' (A: (r, num_embeddings), B: (embedding_dim, r)). Tensors keep their stored dtype.
    """

    name: str
    kind: str
    A: Any
    B: Any
    scale: float
    r: int
    alpha: float
    magnitude: Any = None
    bias: Any = None

    @property
    def d_in(self) -> int:
        return int(self.A.shape[1])

    @property
    def d_out(self) -> int:
        return int(self.B.shape[0])

    @property
    def n_params(self) -> int:
        n = self.r * (self.d_in + self.d_out)
        n += 0 if self.magnitude is None else self.magnitude.numel()
        return n + (0 if self.bias is None else self.bias.numel())


@dataclasses.dataclass
class Adapter:
    """A PEFT LoRA adapter: its config dict (all keys kept), its modules and every other tensor."""

    config: dict[str, Any]
    modules: dict[str, LoraModule]
    extra_tensors: dict[str, Any] = dataclasses.field(default_factory=dict)
    source: Path | None = None
    """Directory it was read from; other files there (README, tokenizer) are copied on save."""

    @property
    def use_rslora(self) -> bool:
        return bool(self.config.get("use_rslora", False))

    @property
    def use_dora(self) -> bool:
        return bool(self.config.get("use_dora", False))

    @property
    def spec(self) -> LoraSpec:
        return config_spec(self.config)

    @property
    def n_params(self) -> int:
        return sum(m.n_params for m in self.modules.values())

    @property
    def saved(self) -> "SavedTensors":
        """The non-LoRA tensors, classified (``saved_tensors``)."""
        return saved_tensors(self)


@dataclasses.dataclass
class TokenRows:
    """Trained rows of an embedding (PEFT ``trainable_token_indices``): ``weight[indices] = values``."""

    module: str
    indices: list[int]
    values: Any


@dataclasses.dataclass
class SavedTensors:
    """What an adapter file holds besides LoRA factors."""

    params: dict[str, Any]
    """Base parameter (or buffer) name -> its full saved value: modules_to_save copies, trained biases, saved embeddings."""
    rows: list[TokenRows]
    carried: list[str]
    """Keys that do not change outputs (VeLoRA / MonteCLoRA training state): carried through, never applied."""

    def __bool__(self) -> bool:
        return bool(self.params or self.rows)

    def describe(self) -> str:
        """'lm_head.weight, 2 biases, 3 rows of model.embed_tokens' for notes."""
        parts = []
        biases = [n for n in self.params if n.endswith(".bias")]
        others = [n for n in self.params if not n.endswith(".bias")]
        if others:
            parts.append(", ".join(others[:3]) + (f" (+{len(others) - 3} more)" if len(others) > 3 else ""))
        if biases:
            parts.append(f"{len(biases)} trained bias{'es' if len(biases) > 1 else ''}")
        for r in self.rows:
            parts.append(f"{len(r.indices)} trained token row{'s' if len(r.indices) > 1 else ''} of {r.module}")
        return "; ".join(parts)


def param_name(key: str) -> str:
    """PEFT's saved key of a non-LoRA tensor -> the base model's parameter name."""
    name = key[len(PREFIX):] if key.startswith(PREFIX) else key
    for marker in (".base_layer.", ".modules_to_save.default.", ".original_module."):
        name = name.replace(marker, ".")
    return name


def _token_indices(config: dict[str, Any], module: str) -> list[int]:
    spec = config.get("trainable_token_indices")
    if isinstance(spec, list):
        return [int(i) for i in spec]
    if isinstance(spec, dict):  # PEFT _set_trainable: a module name ending with the key
        keys = sorted((k for k in spec if module.endswith(k)), key=len, reverse=True)
        if keys:
            return [int(i) for i in spec[keys[0]]]
    raise LoradialError(f"the adapter has trained token rows for {module} but trainable_token_indices does not name them",
                        "the adapter config does not match its weights: save it again with PEFT")


def saved_tensors(adapter: Adapter) -> SavedTensors:
    """Classify ``adapter.extra_tensors`` (see the module docstring)."""
    params: dict[str, Any] = {}
    rows: list[TokenRows] = []
    carried: list[str] = []
    for key, t in adapter.extra_tensors.items():
        if any(m in key for m in TRAINING_STATE_MARKERS):
            carried.append(key)
        elif key.endswith(TOKEN_DELTA_SUFFIX):
            module = param_name(key[: -len(TOKEN_DELTA_SUFFIX)])
            idx = _token_indices(adapter.config, module)
            if t.dim() != 2 or t.shape[0] != len(idx):
                raise LoradialError(f"{key} is {tuple(t.shape)} but trainable_token_indices names {len(idx)} tokens",
                                    "the adapter config does not match its weights: save it again with PEFT")
            rows.append(TokenRows(module, idx, t))
        else:
            name = param_name(key)
            if name in params:
                raise LoradialError(f"the adapter holds two tensors for {name}", "the adapter file is damaged")
            params[name] = t
    return SavedTensors(params, rows, carried)


# --- reading -----------------------------------------------------------------------------------
def config_spec(config: dict[str, Any]) -> LoraSpec:
    """The LoraSpec (r, alpha, rsLoRA, patterns) of a PEFT adapter config, validated."""
    for key in ("r", "lora_alpha"):
        if key not in config:
            raise LoradialError(f"adapter_config.json has no {key!r}", "is this a PEFT LoRA adapter?")
    r, alpha = config["r"], config["lora_alpha"]
    if isinstance(r, float) and r.is_integer():
        r = int(r)
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key) is not None and not isinstance(config[key], dict):
            raise LoradialError(f"adapter_config.json {key} must be an object, got {type(config[key]).__name__}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise LoradialError(f"lora_alpha must be a number, got {alpha!r}", "fix adapter_config.json")
    return LoraSpec(
        r=r,
        lora_alpha=alpha,
        use_rslora=bool(config.get("use_rslora", False)),
        use_dora=bool(config.get("use_dora", False)),
        rank_pattern=dict(config.get("rank_pattern") or {}),
        alpha_pattern=dict(config.get("alpha_pattern") or {}),
        lora_bias=bool(config.get("lora_bias", False)),
    )


def _read_config(path: Path) -> dict[str, Any]:
    config = read_json(path / CONFIG_NAME, "adapter config")
    if not isinstance(config, dict):
        raise LoradialError(f"{path / CONFIG_NAME} is not a JSON object", "regenerate the adapter with PEFT")
    peft_type = str(config.get("peft_type") or "LORA").upper()
    if peft_type != "LORA":
        raise LoradialError(f"adapter at {path} is a {peft_type} adapter, not LoRA", "loradial reads PEFT LoRA adapters")
    return config


def _read_tensors(path: Path, allow_pickle: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """All tensors of the adapter file and the safetensors metadata."""
    st, binf = path / SAFETENSORS_NAME, path / BIN_NAME
    if st.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(st), framework="pt") as f:
                meta = dict(f.metadata() or {})
                return {k: f.get_tensor(k) for k in f.keys()}, meta
        except Exception as e:  # SafetensorError, OSError, ValueError: all mean a bad file
            raise LoradialError(
                f"{st} is not a readable safetensors file ({type(e).__name__}: {str(e)[:120]})",
                "the file is truncated or corrupt: copy or save the adapter again",
            ) from None
    if binf.is_file():
        if not allow_pickle:
            raise LoradialError(
                f"{binf} is a pickle checkpoint, which can execute code when loaded",
                "pass --allow-pickle (loaded with torch.load(weights_only=True)) or convert it to safetensors",
            )
        import torch

        try:
            state = torch.load(str(binf), map_location="cpu", weights_only=True)
        except Exception as e:
            if "weights only load failed" in str(e).lower() or "unsupported global" in str(e).lower():
                raise LoradialError(f"refused {binf}: loading it would run code or build objects that are not tensors "
                                    "(torch.load(weights_only=True) stopped it)",
                                    "do not use this file; get the adapter as safetensors from a source you trust") from None
            raise LoradialError(f"could not load {binf} ({type(e).__name__}: {str(e)[:120]})", "the file is corrupt") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise LoradialError(f"{binf} is not a state dict of tensors", "save the adapter with PEFT")
        return dict(state), {"format": "pt"}
    raise LoradialError(f"no {SAFETENSORS_NAME} in {path}", "point at a PEFT adapter directory (save_pretrained output)")


def _split_key(key: str) -> tuple[str, str, bool | None] | None:
    """'base_model.model.M.lora_A.weight' -> ('M', 'A', False); None for non-LoRA tensors."""
    for suffix, (role, emb) in _SUFFIXES.items():
        if key.endswith(suffix):
            name = key[: -len(suffix)]
            return (name[len(PREFIX):] if name.startswith(PREFIX) else name), role, emb
    return None


def _check_tensor(key: str, t: Any, dims: int | None = None) -> None:
    import torch

    if not t.is_floating_point() or str(t.dtype).replace("torch.", "") not in _FLOAT_NAMES:
        raise LoradialError(f"tensor {key} has dtype {t.dtype}, expected a float type", "the adapter file is damaged")
    if dims is not None and t.dim() != dims:
        hint = "conv LoRA layers are not supported" if t.dim() == 4 else "the adapter file is damaged"
        raise LoradialError(f"tensor {key} has shape {tuple(t.shape)}, expected {dims} dimensions", hint)
    # a sum is NaN/Inf if any entry is (exact); a finite-but-overflowing sum falls back to the entrywise test
    if not bool(torch.isfinite(t.sum(dtype=torch.float32))) and not bool(torch.isfinite(t).all()):
        raise LoradialError(f"tensor {key} contains NaN or Inf", "the training diverged or the file is damaged")


def load_adapter(path: str | Path, allow_pickle: bool = False, verb: str | None = None) -> Adapter:
    """Read and validate a PEFT LoRA adapter directory (safetensors; ``.bin`` only with ``allow_pickle``);
    ``path`` may be a Hub id (``models.hub.resolve_adapter``: only the adapter's files are downloaded).

    Checks: every config field is one ``verb`` supports (``features.check``; without a verb, only what
    no verb can read is refused); every module has both A and B; A is (r, d_in), B is (d_out, r)
    with equal r, and r equals PEFT's per-module rank (``rank_pattern`` or ``r``); float dtypes;
    no NaN/Inf; magnitude and bias are (d_out,).
    """
    from loradial.models.hub import resolve_adapter

    path = resolve_adapter(path)  # a local directory, or a Hub id's snapshot
    if path.is_file() and path.name in (SAFETENSORS_NAME, BIN_NAME, CONFIG_NAME):
        path = path.parent
    if not path.is_dir():
        raise LoradialError(f"adapter directory not found: {path}", "pass the directory written by save_pretrained")
    config = _read_config(path)
    features.check(config, verb or features.READ)
    spec = config_spec(config)
    tensors, _meta = _read_tensors(path, allow_pickle)
    parts: dict[str, dict[str, Any]] = {}
    emb: dict[str, bool] = {}
    extra: dict[str, Any] = {}
    for key, t in tensors.items():
        split = _split_key(key)
        if split is None:
            if t.is_floating_point():
                _check_tensor(key, t)
            extra[key] = t
            continue
        name, role, is_emb = split
        if role in parts.get(name, {}):
            raise LoradialError(f"module {name} has two {role} tensors", "the adapter file is damaged")
        _check_tensor(key, t, 2 if role in ("A", "B") else 1)
        parts.setdefault(name, {})[role] = t
        if is_emb is not None:
            if emb.setdefault(name, is_emb) != is_emb:
                raise LoradialError(f"module {name} mixes lora_embedding and lora_A/B tensors", "the adapter file is damaged")
    if not parts:
        raise LoradialError(f"adapter at {path} holds no LoRA tensors", "is this a PEFT LoRA adapter?")
    fan_in_fan_out = bool(config.get("fan_in_fan_out", False))
    modules: dict[str, LoraModule] = {}
    for name in sorted(parts, key=_natural_key):
        p = parts[name]
        for role in ("A", "B"):
            if role not in p:
                raise LoradialError(f"module {name} has no lora_{role} tensor", "the adapter file is incomplete")
        A, B = p["A"], p["B"]
        r = int(A.shape[0])
        if B.shape[1] != r:
            raise LoradialError(
                f"module {name}: lora_A is {tuple(A.shape)} but lora_B is {tuple(B.shape)} (ranks {r} vs {B.shape[1]})",
                "the adapter file is damaged",
            )
        r_cfg = spec.rank_for(name)
        if r_cfg != r:
            raise LoradialError(
                f"module {name} has rank {r} but adapter_config.json says {r_cfg}",
                "fix r / rank_pattern in adapter_config.json to match the weights",
            )
        d_out = int(B.shape[0])
        for role in ("magnitude", "bias"):
            if role in p and p[role].shape[0] != d_out:
                raise LoradialError(f"module {name}: {role} has {p[role].shape[0]} entries, lora_B has {d_out} rows",
                                    "the adapter file is damaged")
        kind = "embedding" if emb.get(name) else ("conv1d" if fan_in_fan_out else "linear")
        alpha = spec.alpha_for(name)
        modules[name] = LoraModule(name, kind, A, B, scaling(r, alpha, spec.use_rslora), r, alpha,
                                   p.get("magnitude"), p.get("bias"))
    if spec.use_dora and any(m.magnitude is None for m in modules.values()):
        missing = next(n for n, m in modules.items() if m.magnitude is None)
        raise LoradialError(f"use_dora is set but module {missing} has no lora_magnitude_vector", "the adapter file is incomplete")
    ad = Adapter(config, modules, extra, path)
    saved_tensors(ad)  # trained token rows must agree with the config
    return ad


def _natural_key(name: str) -> list:
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split(".")]


# --- math helpers ------------------------------------------------------------------------------
def delta_weight(module: LoraModule, dtype: Any = None, base_orientation: bool = False):
    """ΔW = scale · B · A, (d_out, d_in) in linear orientation (for tests and small shapes only).

    With ``base_orientation`` the result is laid out like the base weight: transposed for an
    embedding (num_embeddings, embedding_dim) and for GPT-2 Conv1D (d_in, d_out), as PEFT's
    ``get_delta_weight`` returns it. DoRA's magnitude is not applied here.
    """
    import torch

    dtype = dtype or torch.float64
    delta = (module.B.to(dtype) @ module.A.to(dtype)) * module.scale
    if base_orientation and module.kind in ("embedding", "conv1d"):
        delta = delta.T
    return delta


# --- writing -----------------------------------------------------------------------------------
def _most_common(values: list) -> Any:
    counts: dict[Any, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return max(counts, key=counts.__getitem__)  # ties: the first seen (dicts keep insertion order)


def exact_pattern_key(name: str, names: list[str]) -> str:
    """A rank_pattern / alpha_pattern key selecting ``name`` and no other of ``names`` under PEFT's
    rule ``(.*\\.)?(key)$``: the plain name when that is unambiguous (readable), else escaped."""
    import re

    try:
        rx = re.compile(rf"(.*\.)?({name})$")
    except re.error:
        return re.escape(name)
    if all((rx.match(other) is not None) == (other == name) for other in names):
        return name
    return re.escape(name)


def patterns_for(modules: dict[str, LoraModule], use_rslora: bool) -> dict[str, Any]:
    """Config fields (r, lora_alpha, rank_pattern, alpha_pattern) under which PEFT gives every
    module exactly its own rank and alpha: the commonest value is global, the others are listed
    by full name (``exact_pattern_key``: a key matching only that module)."""
    names = list(modules)
    ranks = [modules[n].r for n in names]
    alphas = [_clean_number(modules[n].alpha) for n in names]
    r0, a0 = _most_common(ranks), _most_common(alphas)
    out = {
        "r": r0,
        "lora_alpha": a0,
        "rank_pattern": {exact_pattern_key(n, names): r for n, r in zip(names, ranks) if r != r0},
        "alpha_pattern": {exact_pattern_key(n, names): a for n, a in zip(names, alphas) if a != a0},
    }
    spec = LoraSpec(r=r0, lora_alpha=a0, use_rslora=use_rslora, rank_pattern=out["rank_pattern"], alpha_pattern=out["alpha_pattern"])
    for n in names:  # the rule must give back every module's own (r, alpha)
        assert spec.rank_for(n) == modules[n].r and spec.alpha_for(n) == _clean_number(modules[n].alpha), n
    return out


def _clean_number(x: float) -> int | float:
    """An alpha as JSON writes it: an int when it is one (PEFT's own configs use ints)."""
    x = float(x)
    return int(x) if x.is_integer() and abs(x) < 2**53 else x


def replace_modules(adapter: Adapter, modules: dict[str, LoraModule], **config_updates: Any) -> Adapter:
    """A new Adapter with ``modules`` (their r, alpha and scale must agree under ``config_updates``),
    whose config's r / lora_alpha / rank_pattern / alpha_pattern are rewritten to reproduce them."""
    config = dict(adapter.config)
    config.update(config_updates)
    use_rslora = bool(config.get("use_rslora", False))
    for m in modules.values():
        expected = scaling(m.r, m.alpha, use_rslora)
        if not math.isclose(expected, m.scale, rel_tol=1e-9, abs_tol=0.0):
            raise AssertionError(f"{m.name}: scale {m.scale} disagrees with alpha {m.alpha}, r {m.r}")
    config.update(patterns_for(modules, use_rslora))
    return Adapter(config, modules, dict(adapter.extra_tensors), adapter.source)


def state_dict(adapter: Adapter) -> dict[str, Any]:
    """The tensors as PEFT saves them (keys under ``base_model.model.``, contiguous)."""
    out: dict[str, Any] = {}
    for name, m in adapter.modules.items():
        base = PREFIX + name
        if m.kind == "embedding":
            out[base + ".lora_embedding_A"], out[base + ".lora_embedding_B"] = m.A, m.B
        else:
            out[base + ".lora_A.weight"], out[base + ".lora_B.weight"] = m.A, m.B
            if m.bias is not None:
                out[base + ".lora_B.bias"] = m.bias
        if m.magnitude is not None:
            out[base + ".lora_magnitude_vector"] = m.magnitude
    for key, t in adapter.extra_tensors.items():
        if key in out:
            raise LoradialError(f"extra tensor {key} collides with a LoRA tensor", "the adapter is inconsistent")
        out[key] = t
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


_OWN_FILES = {CONFIG_NAME, SAFETENSORS_NAME, BIN_NAME}


def _our_card(f: Path) -> bool:
    """loradial's model card describes the adapter it was written for, not one derived from it."""
    from loradial.adapters.card import CARD_MARK

    return f.name == "README.md" and CARD_MARK in f.read_text(encoding="utf-8", errors="replace")


def save_adapter(adapter: Adapter, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``adapter`` as a PEFT adapter directory, atomically (loadable by ``PeftModel.from_pretrained``).

    The directory appears complete or not at all. Other files of the source directory (tokenizer files,
    a README unless it is loradial's model card of the source adapter) are copied alongside.
    """
    from safetensors.torch import save_file

    tensors = state_dict(adapter)
    config_spec(adapter.config)  # refuse to write a config PEFT would misread
    path = Path(path).expanduser()
    check_out_not_overlapping(path, [("input adapter", adapter.source)])
    check_finite(tensors, f"the adapter for {path}",
                 "the values overflowed (e.g. too large a --scale) or training diverged")
    with atomic_dir(path, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / SAFETENSORS_NAME), metadata={"format": "pt"})
        from loradial.io import atomic_write_json

        atomic_write_json(tmp / CONFIG_NAME, adapter.config)
        if adapter.source is not None and Path(adapter.source).is_dir():
            for f in Path(adapter.source).iterdir():
                if f.is_file() and f.name not in _OWN_FILES and not f.name.startswith(".") and not _our_card(f):
                    shutil.copy2(f, tmp / f.name)
    return path
