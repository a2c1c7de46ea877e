"""Shared builders for the adapter tests (no tests here): tiny models from config and PEFT adapters
made by PEFT itself with ``init_lora_weights=False`` (so B ≠ 0), saved with ``save_pretrained``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import TINY_CONFIGS


def tiny_model(arch: str = "llama", seed: int = 0, **overrides):
    from transformers import AutoModelForCausalLM

    from loradial.models.resolve import to_pretrained_config

    torch.manual_seed(seed)
    cfg = dict(TINY_CONFIGS[arch])
    cfg.update(overrides)
    model = AutoModelForCausalLM.from_config(to_pretrained_config(cfg))
    return model.eval()


def peft_adapter(tmp: Path, arch: str = "llama", seed: int = 0, model_overrides: dict | None = None, name: str | None = None, **lora):
    """(PeftModel, adapter dir) for a fresh tiny ``arch`` with LoRA kwargs ``lora``."""
    import peft

    model = tiny_model(arch, seed, **(model_overrides or {}))
    lora.setdefault("init_lora_weights", False)
    torch.manual_seed(seed + 1)
    pm = peft.get_peft_model(model, peft.LoraConfig(**lora))
    if lora.get("use_dora"):  # make magnitudes differ from the row norms they start at
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_magnitude_vector" in n:
                    p.mul_(1 + 0.1 * torch.rand_like(p))
    pm.eval()
    path = Path(tmp) / (name or f"adapter_{arch}_{seed}")
    pm.save_pretrained(str(path))
    return pm, path


def save_base(model, tmp: Path, name: str = "base") -> Path:
    """Save a tiny base model (safetensors) as a local model directory."""
    path = Path(tmp) / name
    model.save_pretrained(str(path))
    return path


def peft_delta(pm, name: str) -> torch.Tensor:
    """PEFT's own ΔW (base-weight orientation) of module ``name``."""
    mod = pm.base_model.model.get_submodule(name)
    return mod.get_delta_weight("default").detach().double()


def tokens(vocab: int = 128, batch: int = 2, seq: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (batch, seq), generator=g)


def made_adapters(cases: dict[str, dict]):
    """A module-scoped fixture: ``{case: (PeftModel, adapter dir)}`` for every case of a test file's
    CASES (each saved by PEFT itself with non-zero B factors), shared by the adapter-verb tests."""

    @pytest.fixture(scope="module")
    def made(tmp_path_factory):
        tmp = tmp_path_factory.mktemp("adapters")
        return {k: peft_adapter(tmp, name=k, **v) for k, v in cases.items()}

    return made
