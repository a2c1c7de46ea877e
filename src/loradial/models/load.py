"""The one loader of model weights: local directory or Hub id, dtype, 4-bit, remote-code policy.

Every verb that needs real weights (train, sweep, alpha-sweep, analyze --data, merge) loads them
here, so the same ``--model`` means the same model everywhere. Safetensors only; a model's own code
runs only with ``trust_remote_code``.

``dtype``: 'auto' (bf16 on a GPU, fp32 on a CPU: what training wants), 'bf16', 'fp32', or 'stored'
(the checkpoint's own dtype: what merging and evaluating an adapter against its base want).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from loradial.errors import LoradialError
from loradial.settings import DTYPES


def check_model_dir(path: str | Path) -> Path:
    """A local model directory with config.json and safetensors weights, or a clean error."""
    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise LoradialError(f"no model at {path} (config.json missing)", "--model takes a local model directory with weights")
    if not any(path.glob("*.safetensors")):
        raise LoradialError(f"no safetensors weights in {path}", "save the model with save_pretrained (safetensors)")
    return path


#: bitsandbytes quantizes NF4 on a CPU from this release on (before it, 4-bit needed a CUDA GPU).
BNB_CPU_4BIT = (0, 48)


def check_4bit_support(device_type: str) -> None:
    """--load-in-4bit's requirements where the base will live: bitsandbytes, and a CUDA GPU or the CPU
    (bitsandbytes >= 0.48 quantizes and computes NF4 there, slowly)."""
    if device_type not in ("cuda", "cpu"):
        raise LoradialError(f"--load-in-4bit does not run on {device_type}", "drop --load-in-4bit on this machine")
    try:
        import bitsandbytes
    except ImportError:
        raise LoradialError("--load-in-4bit needs bitsandbytes", "pip install 'loradial[qlora]'") from None
    if device_type == "cpu":
        version = tuple(int(p) for p in re.findall(r"\d+", str(getattr(bitsandbytes, "__version__", "0")))[:2])
        if version < BNB_CPU_4BIT:
            raise LoradialError(f"--load-in-4bit on a CPU needs bitsandbytes >= 0.48 (found {bitsandbytes.__version__})",
                                "pip install -U bitsandbytes, or run on a CUDA GPU")


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    """The tokenizer saved beside a model (a missing or broken one is the user's to fix: exit 2)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - any tokenizer failure is a bad model directory
        raise LoradialError(f"could not load the tokenizer of {path}: {str(e).splitlines()[0][:160]}",
                            "the model directory needs its tokenizer files") from None


def load_model(model: str | Path, *, dtype: str = "auto", load_in_4bit: bool = False, device: str | None = None,
               trust_remote_code: bool = False, local_only: bool = False, frozen: bool = False,
               tokenizer: bool = True):
    """(model, tokenizer or None) from a local directory or (unless ``local_only``) a Hub id.

    ``frozen``: eval mode, no parameter requires grad (the base under an adapter being measured)."""
    import torch
    from transformers import AutoModelForCausalLM

    if dtype not in (*DTYPES, "stored"):
        raise LoradialError(f"unknown dtype {dtype!r}", f"use one of {', '.join(DTYPES)} (fp16 training is not supported)")
    model = str(model)
    where = Path(model).expanduser()
    if local_only:
        where = check_model_dir(where)
    elif not where.is_dir() and (where.exists() or model.startswith((".", "/", "~"))):
        raise LoradialError(f"model {model!r} is not a model directory", "pass a directory with config.json, or a Hub id")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype == "auto":
        dtype = "bf16" if dev.type == "cuda" else "fp32"
    torch_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "stored": "auto"}[dtype]
    kw: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code, "use_safetensors": True}
    if load_in_4bit:
        check_4bit_support(dev.type)
        from transformers import BitsAndBytesConfig

        kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                       bnb_4bit_use_double_quant=True,
                                                       bnb_4bit_compute_dtype=torch.bfloat16)
        kw["device_map"] = {"": dev.index or 0} if dev.type == "cuda" else {"": "cpu"}
    source = str(where) if where.is_dir() else model
    try:
        m = AutoModelForCausalLM.from_pretrained(source, **kw)
    except (OSError, ValueError, KeyError) as e:
        raise LoradialError(f"could not load {model!r}: {str(e).splitlines()[0][:200]}",
                            "check the path or Hub id (and your network for Hub ids)") from None
    tok = load_tokenizer(source, trust_remote_code) if tokenizer else None
    if not load_in_4bit:
        m.to(dev)
    elif dev.type == "cpu" and not frozen:
        # bitsandbytes (0.48-0.50) repacks a CPU Linear4bit's weight for its AVX512-BF16 kernel at the first
        # forward under no_grad (an eval) and from then on computes it with a kernel autograd cannot see:
        # training after an eval silently loses the input gradient through every quantized layer
        for mod in m.modules():
            if hasattr(mod, "support_avx512bf16_for_cpu"):
                mod.support_avx512bf16_for_cpu = False
    if frozen:
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
    return m, tok
