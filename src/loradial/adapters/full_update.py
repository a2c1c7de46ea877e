"""What rank did full fine-tuning use? The spectrum of ΔW = W_ft − W_base, module by module.

For every linear module both models have (nn.Linear, GPT-2 Conv1D; embeddings and the output head only
when asked) the update is formed densely, in PEFT's linear orientation (d_out × d_in):

    ΔW = W_ft − W_base                (nn.Linear: weight is (d_out, d_in))
    ΔW = (W_ft − W_base)ᵀ             (GPT-2 Conv1D: weight is (d_in, d_out); nn.Embedding: (n, d))

and its singular values come from a dense SVD (``torch.linalg.svdvals``) in float64 (or float32) on the
chosen device. The metrics are ``spectrum.spectrum_metrics``'s (energy ranks at 90/95/99 %, stable rank,
effective rank), with r = min(d_in, d_out), the largest rank ΔW could have. If LoRA at rank r already
captured what full fine-tuning did, these energy ranks are at or below r: this is the direct test of
"was LoRA's rank the limit?".

Weights are read lazily from safetensors (``analysis.BaseWeights``: one tensor at a time, single file or
sharded), so only one module's W_ft, W_base and ΔW are in memory at once. The architectures must agree:
same model_type and the same linear modules with the same shapes, else ``LoradialError`` (exit 2).
Parameters other than the analyzed weights (norms, biases, skipped embeddings) that changed are listed:
a LoRA adapter extracted from ΔW (``extraction``) does not carry them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from loradial.adapters.analysis import BaseWeights, recommend_ranks, summarize
from loradial.adapters.format import CONFIG_NAME
from loradial.adapters.spectrum import Spectrum, spectrum_metrics
from loradial.errors import LoradialError
from loradial.models.info import LINEAR_KINDS, ModuleInfo, type_key
from loradial.result import Result
from loradial.spec import layer_index

DTYPES = ("float64", "float32")
BASE_HINT = "--base must be the model the fine-tuned model was trained from (same architecture and sizes)"


def is_full_model_dir(path: str | Path) -> bool:
    """A local Hugging Face model directory (config.json + weights), not a PEFT adapter directory."""
    p = Path(path).expanduser()
    return p.is_dir() and (p / "config.json").is_file() and not (p / CONFIG_NAME).is_file()


# --- pure math ---------------------------------------------------------------------------------
def delta_weight(w_ft: Any, w_base: Any, kind: str, dtype: str = "float64", device: Any = None):
    """ΔW = W_ft − W_base in PEFT's linear orientation (d_out, d_in): transposed for ``conv1d`` (GPT-2
    Conv1D stores (d_in, d_out)) and ``embedding`` (stored (num_embeddings, dim)), as PEFT's ``lora_A`` /
    ``lora_B`` see it. Computed in ``dtype`` on ``device`` (the subtraction too: no rounding to the stored dtype)."""
    import torch

    dt = getattr(torch, dtype)
    if tuple(w_ft.shape) != tuple(w_base.shape):
        raise LoradialError(f"weights of shape {tuple(w_ft.shape)} and {tuple(w_base.shape)} cannot be subtracted", BASE_HINT)
    delta = w_ft.to(device=device, dtype=dt) - w_base.to(device=device, dtype=dt)
    return delta.T if kind in ("conv1d", "embedding") else delta


def singular_values(delta: Any) -> np.ndarray:
    """σ₁ ≥ … ≥ σ_min(d_out, d_in) of a dense ΔW (``torch.linalg.svdvals``), as float64 numpy."""
    import torch

    return torch.linalg.svdvals(delta).double().cpu().numpy()


# --- which modules -----------------------------------------------------------------------------
def _model_info(path: Path, what: str):
    from loradial.models.resolve import inspect_model

    if not path.is_dir():
        raise LoradialError(f"{what} directory not found: {path}", "pass a local Hugging Face model directory (save_pretrained output)")
    if (path / CONFIG_NAME).is_file():
        raise LoradialError(f"{path} is a PEFT adapter, not a full model", "without --from-full, resize and analyze take adapters")
    if not (path / "config.json").is_file():
        raise LoradialError(f"{what} directory {path} has no config.json", "pass a local Hugging Face model directory")
    return inspect_model(str(path))


def _wanted(m: ModuleInfo, include_embeddings: bool) -> bool:
    if m.kind in LINEAR_KINDS and not m.is_output_head:
        return True
    return include_embeddings and (m.kind == "embedding" or (m.kind in LINEAR_KINDS and m.is_output_head))


def module_pairs(ft: str | Path, base: str | Path, include_embeddings: bool = False):
    """(modules to analyze, skipped [{name, reason}], info of ft) for two model directories.

    Linear and Conv1D modules (embeddings and the output head with ``include_embeddings``). Refuses models
    whose model_type or linear modules (names, kinds, shapes) differ; an embedding or head whose shape differs
    (a resized vocabulary) is skipped with the reason."""
    ft, base = Path(ft).expanduser(), Path(base).expanduser()
    fi, bi = _model_info(ft, "fine-tuned model"), _model_info(base, "base model")
    if fi.model_type != bi.model_type:
        raise LoradialError(f"the fine-tuned model is a {fi.model_type!r} model but --base is a {bi.model_type!r} model", BASE_HINT)
    fl = {m.name: m for m in fi.modules if m.kind in LINEAR_KINDS and not m.is_output_head}
    bl = {m.name: m for m in bi.modules if m.kind in LINEAR_KINDS and not m.is_output_head}
    if set(fl) != set(bl):
        only = sorted(set(fl) ^ set(bl), key=str)
        raise LoradialError(f"the architectures differ: {len(only)} linear module(s) exist in only one model (e.g. {only[0]})", BASE_HINT)
    for name, m in fl.items():
        b = bl[name]
        if (m.kind, m.d_in, m.d_out) != (b.kind, b.d_in, b.d_out):
            raise LoradialError(f"the architectures differ: {name} is {m.kind} {m.d_out}x{m.d_in} in the fine-tuned model "
                                f"but {b.kind} {b.d_out}x{b.d_in} in --base", BASE_HINT)
    bmods = {m.name: m for m in bi.modules}
    chosen, skipped = [], []
    for m in fi.modules:
        if not _wanted(m, include_embeddings):
            if m.kind == "embedding" or m.is_output_head:
                skipped.append({"name": m.name, "reason": "embedding or output head (include with --include-embeddings)"})
            continue
        b = bmods.get(m.name)
        if b is None or (b.kind, b.d_in, b.d_out) != (m.kind, m.d_in, m.d_out):
            skipped.append({"name": m.name, "reason": "shape differs from --base (resized vocabulary?)"})
            continue
        chosen.append(m)
    if not chosen:
        raise LoradialError(f"{ft} has no linear modules to compare", "analyze --base takes causal-LM model directories")
    return chosen, skipped, fi


def module_deltas(ft: str | Path, base: str | Path, modules: list[ModuleInfo], dtype: str = "float64",
                  device: Any = None, progress: bool = False) -> Iterator[tuple[ModuleInfo, Any, Any, str]]:
    """(module, ΔW, W_base, weight key) for each module in turn, read lazily; modules without a stored weight
    in either model (a head tied to the embedding) are yielded with ΔW None."""
    if dtype not in DTYPES:
        raise LoradialError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}", "e.g. --svd-dtype float64")
    fw, bw = BaseWeights(ft), BaseWeights(base)
    bar = _bar(progress, len(modules))
    try:
        for m in modules:
            kf, kb = fw.key_for(m.name), bw.key_for(m.name)
            if kf is None or kb is None:
                yield m, None, None, kf or kb or m.name
            else:
                wb = bw.get(kb)
                yield m, delta_weight(fw.get(kf), wb, m.kind, dtype, device), wb, kf
            if bar is not None:
                bar[0].advance(bar[1])
    finally:
        if bar is not None:
            bar[0].stop()


def _bar(progress: bool, total: int):
    if not progress or total < 20:
        return None
    from rich.console import Console
    from rich.progress import Progress

    p = Progress(console=Console(stderr=True), transient=True)
    p.start()
    return p, p.add_task("ΔW spectra", total=total)


def changed_other_params(ft: str | Path, base: str | Path, covered: set[str]) -> tuple[list[str], list[str]]:
    """(names of parameters outside ``covered`` whose values differ, names stored in only one model), compared
    exactly, one tensor at a time."""
    import torch

    fw, bw = BaseWeights(ft), BaseWeights(base)
    changed, unmatched = [], sorted(set(fw.where) ^ set(bw.where))
    for key in sorted(set(fw.where) & set(bw.where) - covered):
        a, b = fw.get(key), bw.get(key)
        if a.shape != b.shape or not torch.equal(a, b):
            changed.append(key)
    return changed, unmatched


def resolve_device(device: str | None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


# --- analyze_full ------------------------------------------------------------------------------
@dataclasses.dataclass
class FullModuleReport(Spectrum):
    """One module's ΔW = W_ft − W_base: ``Spectrum`` with r = min(d_in, d_out) (the most ΔW can have)."""

    name: str
    type: str
    layer: int | None
    kind: str
    d_in: int
    d_out: int
    relative_norm: float | None = None
    """‖ΔW‖_F / ‖W_base‖_F."""
    relative_spectral_norm: float | None = None
    """Not computed for full updates (kept for the shared summaries)."""


@dataclasses.dataclass
class FullAnalyzeResult(Result):
    model: str
    base: str
    device: str
    dtype: str
    n_modules: int
    n_unchanged: int
    """Modules whose ΔW is exactly 0 (frozen in the fine-tune)."""
    modules: list[FullModuleReport]
    skipped: list[dict[str, str]]
    other_changed: list[str]
    """Stored parameters outside the analyzed modules that changed (norms, biases, embeddings): no LoRA carries them."""
    summary: dict[str, Any]
    recommendation: dict[str, Any]
    """The smallest power-of-two LoRA rank at which ``coverage`` of the modules keep ``energy`` of ΔW, and a
    budgeted rank_pattern (``analysis.recommend_ranks`` on the full spectra)."""
    notes: list[str]


def analyze_full(
    model: str | Path,
    base: str | Path,
    energy: float = 0.90,
    coverage: float = 0.90,
    budget: int | None = None,
    include_embeddings: bool = False,
    device: str | None = None,
    dtype: str = "float64",
    progress: bool = False,
) -> FullAnalyzeResult:
    """Per-module singular spectrum of the full fine-tuning update W_ft − W_base (dense SVD in ``dtype`` on
    ``device``), its energy / stable / effective ranks, summaries per type and layer, and the LoRA rank that
    would have kept ``energy`` of it in ``coverage`` of the modules."""
    if not 0 < energy <= 1:
        raise LoradialError(f"--energy must be in (0, 1], got {energy}", "e.g. --energy 0.9")
    modules, skipped, _info = module_pairs(model, base, include_embeddings)
    dev = resolve_device(device)
    reports: list[FullModuleReport] = []
    covered: set[str] = set()
    for m, delta, wb, key in module_deltas(model, base, modules, dtype, dev, progress):
        if delta is None:
            skipped.append({"name": m.name, "reason": "no stored weight in one of the models (tied to the embedding?)"})
            continue
        covered.add(key)
        sigma = singular_values(delta)
        met = spectrum_metrics(sigma, min(m.d_in, m.d_out))
        w_f = float(wb.double().norm())
        reports.append(FullModuleReport(**dataclasses.asdict(met), name=m.name, type=type_key(m.name),
                                        layer=layer_index(m.name), kind=m.kind, d_in=m.d_in, d_out=m.d_out,
                                        relative_norm=met.frobenius_norm / w_f if w_f else None))
        del delta, wb
    if not reports:
        raise LoradialError("no module has a weight in both models", BASE_HINT)
    other, unmatched = changed_other_params(model, base, covered)
    notes = []
    n_zero = sum(r.spectral_norm == 0 for r in reports)
    if n_zero:
        notes.append(f"{n_zero} module(s) did not change (ΔW = 0): frozen in the fine-tune")
    if other:
        notes.append(f"{len(other)} other parameter(s) changed (e.g. {other[0]}): norms, biases or embeddings, "
                     "which a LoRA adapter extracted from ΔW does not carry")
    if unmatched:
        notes.append(f"{len(unmatched)} tensor(s) are stored in only one of the models (e.g. {unmatched[0]})")
    notes.append("energy ranks count what the update used; storage rounding (bf16/fp16 weights) adds a small "
                 "full-rank floor to ΔW's smallest singular values")
    rec = recommend_ranks(reports, energy, coverage, budget, None)
    rec.pop("already_at_rank", None)
    return FullAnalyzeResult(str(model), str(base), dev, dtype, len(reports), n_zero, reports, skipped, other,
                             summarize(reports), rec, notes)
