"""loradial: which LoRA rank and alpha — exact costs, many adapters trained at once, and the
singular spectrum of what you trained. Every CLI verb is one function here returning a dataclass
with ``to_dict()``.

Imports are lazy so that ``import loradial`` (and the CLI) stays fast: ``loradial.plan`` loads
torch-free code, verbs that train load torch only when called. No module or subpackage is named
like a verb, so ``loradial.<verb>`` is always the function. The layers are drawn in
docs/architecture.md and enforced by the import-linter contracts in pyproject.toml.
"""

from __future__ import annotations

import importlib
from typing import Any

from loradial.errors import LoradialError

__version__ = "0.1.0"

#: public name -> module that defines it
_API = {
    "plan": "loradial.cost.planning",
    "list_models": "loradial.models.resolve",
    "inspect_model": "loradial.models.resolve",
    "LoraSpec": "loradial.spec",
    "TrainSettings": "loradial.settings",
    "SweepSettings": "loradial.settings",
    "recommend": "loradial.advice.recommendation",
    "export_config": "loradial.advice.export",
    "export_sweep": "loradial.advice.export",
    "diagnose": "loradial.advice.diagnosis",
    "train": "loradial.engine.train",
    "sweep": "loradial.sweeps.api",
    "analyze": "loradial.adapters.analysis",
    "analyze_full": "loradial.adapters.full_update",
    "resize_from_full": "loradial.adapters.extraction",
    "resize": "loradial.adapters.surgery",
    "rescale": "loradial.adapters.surgery",
    "merge": "loradial.adapters.surgery",
    "alpha_sweep": "loradial.adapters.evaluate",
    "load_adapter": "loradial.adapters.format",
    "save_adapter": "loradial.adapters.format",
    "report": "loradial.reports.api",
    "demo": "loradial.flows.demo",
    "tune": "loradial.flows.tune",
}

__all__ = ["LoradialError", "__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'loradial' has no attribute {name!r}")
