"""Successive halving for sweeps: rung boundaries and who survives a rung.

Successive halving (Jamieson & Talwalkar 2016, arXiv:1502.07943; Li et al. 2018, Hyperband,
arXiv:1603.06560) trains every config for a small part of the budget, keeps the better half, and
repeats. Here the rungs sit at fixed fractions of the step budget (default 1/4 and 1/2): with 8
configs, 8 train to 25 %, the best 4 to 50 %, the best 2 to 100 %. Every survivor is compared at
the same step (the rung boundary), on the same eval set, so the comparison is fair; configs whose
eval loss is not finite (diverged) always lose.

Pure functions only; the sweep decides when to call them.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from loradial.errors import LoradialError

DEFAULT_FRACTIONS = (0.25, 0.5)


def parse_fractions(text: str | Sequence[float] | None) -> tuple[float, ...]:
    """'0.25,0.5' (or a list) -> sorted fractions in (0, 1); None -> the default (1/4, 1/2)."""
    if text is None or text == "":
        return DEFAULT_FRACTIONS
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        try:
            f = float(item)
        except (TypeError, ValueError):
            raise LoradialError(f"invalid halving fraction {item!r}", "use e.g. --halving-at 0.25,0.5") from None
        if not 0.0 < f < 1.0:
            raise LoradialError(f"halving fractions must lie strictly between 0 and 1, got {item!r}",
                                "use e.g. --halving-at 0.25,0.5")
        out.append(f)
    if not out:
        raise LoradialError("no halving fractions given", "use e.g. --halving-at 0.25,0.5")
    return tuple(sorted(set(out)))


def rung_boundaries(total_steps: int, fractions: Sequence[float] | None) -> list[int]:
    """Step boundaries of the rungs: round(f * total) for each fraction (those in [1, total)), then total.

    Without halving (``fractions`` None or empty) there is one rung: ``[total_steps]``.
    """
    if total_steps <= 0:
        raise LoradialError(f"the step budget must be positive, got {total_steps}", "use --steps N or --epochs E")
    cuts = sorted({int(round(f * total_steps)) for f in (fractions or ())})
    return [c for c in cuts if 0 < c < total_steps] + [total_steps]


def rank_key(loss: float | None, params: int, name: str) -> tuple[float, int, str]:
    """Sort key: lower eval loss first (non-finite last), then fewer trainable parameters, then name."""
    bad = loss is None or not math.isfinite(loss)
    return (math.inf if bad else float(loss), params, name)


def survivors(scores: Mapping[str, float | None], params: Mapping[str, int]) -> list[str]:
    """Keep the better half (ceil(n/2), at least 1) of ``scores`` (name -> eval loss at the rung).

    Ties go to fewer trainable parameters, then to the name, so the choice is deterministic.
    Non-finite losses never survive unless every config diverged (then the first by name does, so the
    sweep still ends with a result to report).
    """
    order = sorted(scores, key=lambda n: rank_key(scores[n], params.get(n, 0), n))
    keep = max(1, math.ceil(len(order) / 2))
    finite = [n for n in order if scores[n] is not None and math.isfinite(scores[n])]
    return (finite or order)[:keep] if finite else order[:1]


def adapter_steps(n_configs: int, boundaries: Sequence[int]) -> int:
    """Adapter-steps a halving schedule trains: sum over rungs of survivors x rung length."""
    total, alive, prev = 0, n_configs, 0
    for i, b in enumerate(boundaries):
        total += alive * (b - prev)
        prev = b
        if i < len(boundaries) - 1:
            alive = max(1, math.ceil(alive / 2))
    return total
