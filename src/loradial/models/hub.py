"""Adapters and base models from the Hugging Face Hub: a Hub id becomes a local snapshot directory.

Every verb that reads an adapter (``adapters.format.load_adapter``) or a base model's weights
(``adapters.evaluate.load_base_model``: merge, alpha-sweep, analyze --data) resolves its argument
here, so a local directory and a Hub id (``owner/name``) work the same everywhere. A path that exists
locally always wins. Only the files a verb reads are downloaded (``huggingface_hub.snapshot_download``
with ``allow_patterns``): for an adapter its config, its safetensors weights and its card; for a
model its JSON files (config, tokenizer, generation config, index), safetensors weights and
tokenizer files, never pickle checkpoints. Offline (``HF_HUB_OFFLINE=1``) a snapshot already in the
cache is used; else one line says what could not be fetched and how to fix it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from loradial.errors import LoradialError

ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors", "README.md"]
MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_hub_id(ref: str | os.PathLike) -> bool:
    """``owner/name`` that is not a local path (a path that exists, or one written as ./, /, ~)."""
    text = str(ref)
    if Path(text).expanduser().exists() or text.startswith((".", "/", "~")):
        return False
    return _HUB_ID.fullmatch(text) is not None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def snapshot(repo_id: str, allow_patterns: list[str], what: str) -> Path:
    """Local directory of ``repo_id``'s files matching ``allow_patterns`` (cached or downloaded)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        raise LoradialError(f"reading the {what} {repo_id!r} from the Hub needs huggingface_hub",
                            "pip install 'loradial[hub]', or pass a local directory") from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns))
    except Exception as e:  # offline, gated, private, missing: all the user's to fix
        if _offline():
            raise LoradialError(f"the {what} {repo_id!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set",
                                f"unset HF_HUB_OFFLINE to download it, or pass a local {what} directory") from None
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise LoradialError(f"could not fetch the {what} {repo_id!r} from the Hub: {reason}",
                            f"check the id, your network and access (huggingface-cli login), or pass a local {what} directory") from None


def resolve_adapter(ref: str | os.PathLike) -> Path:
    """A PEFT adapter directory: ``ref`` itself, or the snapshot of the Hub repository ``ref``."""
    if not is_hub_id(ref):
        return Path(ref).expanduser()
    path = snapshot(str(ref), ADAPTER_FILES, "adapter")
    if not (path / "adapter_config.json").is_file():
        raise LoradialError(f"the Hub repository {str(ref)!r} has no adapter_config.json",
                            "is it a PEFT adapter repository? (a full model goes to --model)")
    return path


def resolve_model(ref: str | os.PathLike) -> Path:
    """A model directory with weights: ``ref`` itself, or the snapshot of the Hub repository ``ref``."""
    if not is_hub_id(ref):
        return Path(ref).expanduser()
    return snapshot(str(ref), MODEL_FILES, "model")
