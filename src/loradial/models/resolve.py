"""Resolve ``--model`` and list the modules LoRA can target, with their shapes, without weights.

``--model`` is, in order: a local directory holding config.json (or a config .json file); a bundled
name (or the Hub id of a bundled model) from ``loradial/models/configs``; a Hub id, for which only
config.json is fetched. The module list then comes from ``shapes.py`` (pure arithmetic on the config,
no torch, for the bundled families) or from a build on the meta device (no memory, no weights), and
gives every module PEFT can wrap with (d_in, d_out) in PEFT's orientation.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from loradial.errors import LoradialError
from loradial.io import read_json
from loradial.models.info import ModelInfo, ModuleInfo
from loradial.models.shapes import model_info as _fast_model_info
from loradial.result import Result

CONFIG_DIR = Path(__file__).parent / "configs"

# --- bundled configs ---------------------------------------------------------------------------
@lru_cache(maxsize=1)
def bundled_index() -> list[dict[str, Any]]:
    """Entries of configs/index.json: name, hub_id, file, family, params_note, source."""
    path = CONFIG_DIR / "index.json"
    return json.loads(path.read_text()) if path.exists() else []


def bundled_entry(name: str) -> dict[str, Any] | None:
    low = name.lower()
    for entry in bundled_index():
        if low in (entry["name"].lower(), entry.get("hub_id", "").lower()):
            return entry
    return None


def _close_matches(name: str) -> list[str]:
    names = [e["name"] for e in bundled_index()] + [e.get("hub_id", "") for e in bundled_index()]
    low = {n.lower(): n for n in names}
    return [low[m] for m in difflib.get_close_matches(name.lower(), list(low), n=3, cutoff=0.5)]


# --- resolution --------------------------------------------------------------------------------
def load_config_dict(model: str, allow_hub: bool = True) -> tuple[dict[str, Any], str]:
    """Return (config dict, source) for a local dir, a bundled name or a Hub id."""
    path = Path(model).expanduser()
    if path.is_dir():
        cfg_path = path / "config.json"
        if not cfg_path.is_file():
            raise LoradialError(f"directory {path} has no config.json", "point --model at a Hugging Face model directory")
        cfg = read_json(cfg_path, "model config")
        source = "local"
    elif path.is_file() and path.name.endswith(".json"):
        cfg, source = read_json(path, "model config"), "local"
    elif (entry := bundled_entry(model)) is not None:
        cfg, source = json.loads((CONFIG_DIR / entry["file"]).read_text()), "bundled"
    elif allow_hub and re.fullmatch(r"[\w.-]+/[\w.-]+", model):
        cfg, source = _fetch_hub_config(model), "hub"
    else:
        close = _close_matches(model)
        hint = f"did you mean {', '.join(close)}?" if close else "run `loradial models` for bundled names, or pass a local directory or a Hub id"
        raise LoradialError(f"unknown model {model!r}", hint)
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model_type"), str):
        raise LoradialError(f"config of {model!r} has no model_type", "a Hugging Face config.json names its model_type")
    return cfg, source


#: seconds for the one Hub request that checks config.json is reachable (no retries)
HUB_TIMEOUT = 10.0


def _fetch_hub_config(repo_id: str) -> dict[str, Any]:
    """Fetch only config.json from the Hub (never weights).

    One metadata request with a ``HUB_TIMEOUT`` timeout first: offline, huggingface_hub's
    ``hf_hub_download`` would retry with backoff for ~25 s (printing each retry) before failing. If
    that request fails, a cached copy is used (as ``hf_hub_download`` would), else a one-line error."""
    try:
        import huggingface_hub as hub
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        raise LoradialError("huggingface_hub is not installed", "pip install huggingface_hub") from None
    try:
        hub.get_hf_file_metadata(hub.hf_hub_url(repo_id, "config.json"), timeout=HUB_TIMEOUT)
        local = hub.hf_hub_download(repo_id, "config.json", etag_timeout=HUB_TIMEOUT)
    except Exception as e:  # offline, gated, missing repo: all user-fixable
        cached = hub.try_to_load_from_cache(repo_id, "config.json")
        if not isinstance(cached, str):
            raise LoradialError(
                f"could not fetch config.json of {repo_id!r} from the Hub ({type(e).__name__})",
                "check the id and your network (HF_HUB_OFFLINE must be unset), or pass a local directory with config.json",
            ) from None
        local = cached
    return read_json(local, "model config")


def _one_line(text: str, limit: int = 300) -> str:
    """An exception's message on one line: strict-dataclass errors put the reason on the next line."""
    line = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def to_pretrained_config(cfg: dict[str, Any], trust_remote_code: bool = False):
    """A transformers PretrainedConfig from a config dict, with a clean error for unknown types."""
    from transformers import AutoConfig

    cfg = dict(cfg)
    model_type = cfg.pop("model_type")
    try:
        return AutoConfig.for_model(model_type, **cfg)
    except Exception as e:  # ValueError/KeyError for unknown types, strict-dataclass errors for bad fields
        msg = _one_line(str(e)) or type(e).__name__
        hint = ("this model ships its own code (auto_map in config.json): pass --trust-remote-code if you trust it"
                if cfg.get("auto_map") else
                "check config.json, or upgrade transformers if this architecture is newer than it")
        raise LoradialError(f"unknown or malformed model_type {model_type!r}: {msg}", hint) from None


def _model_class(config) -> Any:
    import transformers

    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    for auto in ("AutoModelForCausalLM", "AutoModel"):
        try:
            return getattr(transformers, auto)._model_mapping[type(config)]
        except KeyError:
            continue
    raise LoradialError(f"transformers has no model class for model_type {config.model_type!r}", "upgrade transformers")


def build_meta_model(cfg: dict[str, Any], remote_code_from: str | None = None):
    """Instantiate the model on the meta device: shapes only, no memory, no weights read. With
    ``remote_code_from`` (a model directory or Hub id whose config.json has an ``auto_map``), the
    repository's own configuration and model classes are used (``trust_remote_code=True``)."""
    import torch

    if remote_code_from is not None:
        return _remote_code_meta_model(remote_code_from)
    config = to_pretrained_config(cfg)
    cls = _model_class(config)
    try:
        with torch.device("meta"):
            return cls._from_config(config) if hasattr(cls, "_from_config") else cls(config)
    except Exception as e:
        raise LoradialError(f"could not build {cfg.get('model_type')} from its config: {_one_line(str(e))}",
                            "check config.json") from None


def _remote_code_meta_model(model: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(model, trust_remote_code=True)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=True)
    except Exception as e:
        raise LoradialError(f"could not build {model!r} from its own code: {_one_line(str(e))}",
                            "check the repository's configuration_*.py / modeling_*.py") from None


def _is_router(mod, name: str) -> bool:
    return "router" in type(mod).__name__.lower() or name.rsplit(".", 1)[-1] == "gate"


def list_modules(model) -> list[ModuleInfo]:
    """Linear, GPT-2 Conv1D, Embedding, ConvNd modules and MoE parameters, PEFT-oriented, in model order."""
    import torch.nn as nn
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    out: list[ModuleInfo] = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            out.append(ModuleInfo(name, "linear", mod.in_features, mod.out_features, mod.bias is not None, mod is head))
        elif isinstance(mod, Conv1D):  # weight is (d_in, d_out): fan_in_fan_out
            d_in, d_out = mod.weight.shape
            out.append(ModuleInfo(name, "conv1d", int(d_in), int(d_out), mod.bias is not None, mod is head))
        elif isinstance(mod, nn.Embedding):
            out.append(ModuleInfo(name, "embedding", mod.num_embeddings, mod.embedding_dim, False, False))
        elif isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and mod.groups == 1:
            d_in = mod.in_channels * math.prod(mod.kernel_size)
            out.append(ModuleInfo(name, "conv", d_in, mod.out_channels, mod.bias is not None, False))
        elif not type(mod).__module__.startswith("torch."):
            # raw parameters PEFT's ParamWrapper can take: fused experts (E, a, b) and router weights
            for pname, p in mod.named_parameters(recurse=False):
                if p.dim() == 3:  # PEFT: in, out = a, b, swapped unless the module says is_transposed
                    e, a, b = (int(s) for s in p.shape)
                    d_in, d_out = (a, b) if getattr(mod, "is_transposed", False) else (b, a)
                    out.append(ModuleInfo(f"{name}.{pname}", "param", d_in, d_out, False, False, e))
                elif p.dim() == 2 and pname == "weight" and _is_router(mod, name):
                    out.append(ModuleInfo(f"{name}.{pname}", "param", int(p.shape[1]), int(p.shape[0])))
    return out


def _other_modules(model, modules: list[ModuleInfo]) -> list[str]:
    wrappable = {m.name for m in modules if m.kind != "param"}
    return [n for n, _ in model.named_modules() if n and n not in wrappable]


def meta_model_info(name: str, source: str, cfg: dict[str, Any], remote_code: bool = False) -> ModelInfo:
    """ModelInfo from a meta-device build (any architecture transformers knows, or with ``remote_code``
    the model's own code, see ``uses_remote_code``; imports torch)."""
    meta = build_meta_model(cfg, name if remote_code else None)
    modules = list_modules(meta)
    total = sum(p.numel() for p in meta.parameters())
    tied = bool(getattr(meta.config, "tie_word_embeddings", False))
    defaults = {k: v for k, v in meta.config.to_dict().items() if k not in cfg}
    return ModelInfo(name, source, cfg, modules, int(total), tied, _other_modules(meta, modules), type(meta).__name__, "meta",
                     defaults)


def inspect_model(model: str, fast: bool = True, trust_remote_code: bool = False) -> ModelInfo:
    """Resolve ``model`` (local dir, bundled name, Hub id) and list its targetable modules.
    ``trust_remote_code``: a model that ships its own code (``auto_map``) is built from that code."""
    cfg, source = load_config_dict(model)
    return model_info_from_config(cfg, model, source, fast, trust_remote_code)


def model_info_from_config(cfg: dict[str, Any], name: str = "config", source: str = "local", fast: bool = True,
                           trust_remote_code: bool = False) -> ModelInfo:
    """ModelInfo of a config dict. With ``fast`` (the default) the bundled families are computed
    analytically by ``shapes.model_info`` (no torch import, milliseconds); anything else, or
    ``fast=False``, is built on the meta device (from the model's own code if it has an ``auto_map``
    and ``trust_remote_code`` is set)."""
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model_type"), str):
        raise LoradialError(f"config of {name!r} has no model_type", "a Hugging Face config.json names its model_type")
    remote = uses_remote_code(cfg, source, trust_remote_code)
    info = None
    if fast and not remote:
        info = _fast_model_info(name, source, cfg)
    return info if info is not None else meta_model_info(name, source, cfg, remote)


def uses_remote_code(cfg: dict[str, Any], source: str, trust_remote_code: bool) -> bool:
    """Build from the model's own code: asked for, the config has an ``auto_map``, and there is code
    to run (a local directory or a Hub repository; a bundled name has only its config.json)."""
    return bool(trust_remote_code and cfg.get("auto_map") and source != "bundled")


# --- `loradial models` -------------------------------------------------------------------------
@dataclasses.dataclass
class ModelList(Result):
    models: list[dict[str, Any]]


def list_models() -> ModelList:
    """The bundled model configs: name, Hub id, family, size and where the config text came from."""
    return ModelList([dict(e) for e in bundled_index()])
