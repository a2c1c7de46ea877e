"""Sweep grids: the cross product of ranks, alphas, variants, target sets, learning rates and seeds.

Pure functions only. A grid comes from CLI lists or a YAML file with the same keys; each config
gets a readable, unique name such as ``r16-a32-rslora-lr2e-4``.

The learning-rate rank rule ``lr(r) = lr * (r / r_ref) ** (-exponent)`` is a hypothesis, not a law:
the exponent often quoted for it (0.84) has no primary source we could find, so it is a flag
(default 0 = the same LR at every rank) and the sweep *measures* it when several LRs per rank are
swept (``fit_lr_rank_exponent``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path
from typing import Any, Sequence

from loradial.advice.rules import lr_for_rank
from loradial.errors import LoradialError
from loradial.settings import DEFAULT

VARIANTS = ("lora", "rslora", "dora")
#: Full fine-tuning, the reference beside the adapters: one config per learning rate of its own grid
#: (``full_lrs``, default: the LoRA grid / 10, LoRA Without Regret's ratio), trained alone (one model copy).
FULL = "full"
FULL_LR_FACTOR = 0.1


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """One point of the grid, in PEFT's vocabulary."""

    name: str
    r: int
    lora_alpha: float
    variant: str
    targets: str
    learning_rate: float
    seed: int = 0

    @property
    def use_rslora(self) -> bool:
        return self.variant == "rslora"

    @property
    def use_dora(self) -> bool:
        return self.variant == "dora"

    @property
    def full(self) -> bool:
        return self.variant == FULL


@dataclasses.dataclass(frozen=True)
class AlphaRule:
    """Alphas either as ratios of r (``ratio:0.5,1,2`` -> alpha = ratio * r) or as fixed values."""

    values: tuple[float, ...]
    ratio: bool

    def alphas(self, r: int) -> list[float]:
        return [v * r if self.ratio else v for v in self.values]


def parse_alphas(text: str | Sequence[float] | None) -> AlphaRule:
    """'ratio:0.5,1,2' or '16,32' (or a list of numbers) -> AlphaRule. Default: alpha = r."""
    if text is None or text == "":
        return AlphaRule((1.0,), True)
    if not isinstance(text, str):
        return AlphaRule(tuple(_positive(v, "alpha") for v in text), False)
    ratio = text.startswith("ratio:")
    body = text[len("ratio:"):] if ratio else text
    values = tuple(_positive(v, "alpha ratio" if ratio else "alpha") for v in body.split(",") if v.strip())
    if not values:
        raise LoradialError(f"no alphas in {text!r}", "use e.g. --alphas ratio:1,2 or --alphas 16,32")
    return AlphaRule(values, ratio)


def _positive(value: Any, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise LoradialError(f"invalid {what} {value!r}", f"{what}: give a positive number") from None
    if not (v > 0 and math.isfinite(v)):
        raise LoradialError(f"{what} must be positive, got {value!r}", f"{what}: give a positive number")
    return v


def format_number(x: float) -> str:
    """Short, stable text for names: 2e-4, 0.5, 16, 1.5e-3, 2e6 (letters, digits, '.', '-' only)."""
    if float(x).is_integer() and abs(x) < 1e6:
        return str(int(x))
    if abs(x) < 1e-2 or abs(x) >= 1e6:
        mant, exp = f"{x:.2e}".split("e")
        return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"
    return f"{x:.3g}"


def config_name(r: int, alpha: float, variant: str, lr: float, targets: str | None = None, seed: int | None = None) -> str:
    """'r16-a32-rslora-lr2e-4', with '-t<targets>' / '-s<seed>' only when the grid varies them."""
    name = f"r{r}-a{format_number(alpha)}-{variant}-lr{format_number(lr)}"
    if targets is not None:
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in targets)
        name += f"-t{safe}"
    if seed is not None:
        name += f"-s{seed}"
    return name


def build_grid(
    ranks: Sequence[int],
    alphas: AlphaRule | str | None = None,
    variants: Sequence[str] = ("lora",),
    targets: Sequence[str] = ("all-linear",),
    lrs: Sequence[float] = (DEFAULT.lr,),
    lr_rank_exponent: float = 0.0,
    seeds: Sequence[int] = (0,),
    full_lrs: Sequence[float] | None = None,
) -> list[SweepConfig]:
    """The cross product, validated. Duplicate points (e.g. equal alphas) appear once.

    The variant 'full' is not crossed with ranks, alphas and targets: it adds one full fine-tuning config
    per learning rate of ``full_lrs`` (default: each LoRA learning rate x 0.1), named ``full-lr<lr>``."""
    if not ranks:
        raise LoradialError("empty grid: no ranks", "use e.g. --ranks 4,8,16,32")
    for r in ranks:
        if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
            raise LoradialError(f"ranks must be positive integers, got {r!r}", "use e.g. --ranks 4,8,16,32")
    rule = alphas if isinstance(alphas, AlphaRule) else parse_alphas(alphas)
    full = FULL in variants
    variants = [v for v in variants if v != FULL]
    for v in variants:
        if v not in VARIANTS:
            raise LoradialError(f"unknown variant {v!r}", f"choose from {', '.join((*VARIANTS, FULL))}")
    if full_lrs is not None and not full:
        raise LoradialError("--full-lrs without the full variant", "add full to --variants, e.g. --variants lora,full")
    if not (variants or full) or not targets or not lrs or not seeds:
        raise LoradialError("empty grid: a list of variants, targets, learning rates or seeds is empty")
    lrs = [_positive(lr, "learning rate") for lr in lrs]
    name_targets = len(set(targets)) > 1
    name_seeds = len(set(seeds)) > 1
    out: dict[str, SweepConfig] = {}
    for r, variant, tgt, lr, seed in itertools.product(ranks, variants, targets, lrs, seeds):
        lr_r = lr_for_rank(lr, r, lr_rank_exponent)
        for alpha in rule.alphas(r):
            name = config_name(r, alpha, variant, lr_r, tgt if name_targets else None, seed if name_seeds else None)
            cfg = SweepConfig(name, r, alpha, variant, tgt, lr_r, seed)
            if out.setdefault(name, cfg) != cfg:  # two different points, one name (and one adapters/<name>/)
                other = out[name]
                raise LoradialError(f"two configs of the grid would share the name {name!r}: targets {other.targets!r} "
                                    f"and {tgt!r}" if other.targets != tgt else
                                    f"two configs of the grid would share the name {name!r}",
                                    "make the target sets differ in their letters and digits, or sweep them separately")
    if full:
        flrs = [_positive(lr, "full fine-tuning learning rate") for lr in full_lrs] if full_lrs else \
            [float(f"{lr * FULL_LR_FACTOR:.3g}") for lr in lrs]
        for lr in dict.fromkeys(flrs):
            name = f"{FULL}-lr{format_number(lr)}"
            out[name] = SweepConfig(name, 0, 0.0, FULL, FULL, lr, seeds[0])
    return list(out.values())


GRID_KEYS = {"ranks", "alphas", "variants", "targets", "lrs", "lr_rank_exponent", "seeds", "full_lrs"}


def load_grid_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML grid with the keys of ``build_grid`` (lists or comma strings)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise LoradialError(f"grid file not found: {path}") from None
    except yaml.YAMLError as e:
        raise LoradialError(f"grid file {path} is not valid YAML: {e}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise LoradialError(f"grid file {path} must be a mapping of {sorted(GRID_KEYS)}")
    unknown = set(data) - GRID_KEYS
    if unknown:
        raise LoradialError(f"unknown keys in grid file {path}: {sorted(unknown)}", f"known keys: {sorted(GRID_KEYS)}")
    return data


def fit_lr_rank_exponent(points: Sequence[tuple[int, float, float]]) -> dict[str, Any] | None:
    """Measure the LR-rank exponent from (rank, learning rate, eval loss) points.

    For each rank with >= 3 learning rates, the optimal lr* is the vertex of a parabola fitted to
    eval loss against log lr (clamped to the swept range); with 2, the better one. Then
    log lr* = c - exponent * log r by least squares; ``spread`` is the slope's standard error
    (None with fewer than 3 ranks). Returns None when fewer than 2 ranks have >= 2 learning rates.
    """
    import numpy as np

    by_rank: dict[int, list[tuple[float, float]]] = {}
    for r, lr, loss in points:
        if loss is not None and math.isfinite(loss):
            by_rank.setdefault(r, []).append((lr, loss))
    best: list[tuple[int, float]] = []
    for r, pts in sorted(by_rank.items()):
        lrs = sorted({lr for lr, _ in pts})
        if len(lrs) < 2:
            continue
        x = np.log([lr for lr, _ in pts])
        y = np.array([loss for _, loss in pts])
        lr_star = float(np.exp(x[int(np.argmin(y))]))
        if len(lrs) >= 3:
            a, b, _ = np.polyfit(x, y, 2)
            if a > 0:
                lr_star = float(np.exp(np.clip(-b / (2 * a), x.min(), x.max())))
        best.append((r, lr_star))
    if len(best) < 2:
        return None
    lx = np.log([r for r, _ in best])
    ly = np.log([lr for _, lr in best])
    slope, intercept = np.polyfit(lx, ly, 1)
    spread = None
    if len(best) >= 3:
        resid = ly - (slope * lx + intercept)
        spread = float(np.sqrt(resid @ resid / (len(best) - 2) / ((lx - lx.mean()) @ (lx - lx.mean()))))
    return {"exponent": float(-slope), "spread": spread, "points": [{"r": r, "best_lr": lr} for r, lr in best]}
