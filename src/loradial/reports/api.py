"""`loradial report DIR`: one self-contained HTML file from what a directory holds.

Reads a sweep (results.json, metrics.jsonl, sweep.yaml), an analysis (analysis.json, and an
alpha-sweep dump), and a plan (plan.json), found in DIR or one level below it, and writes one HTML
file with inline CSS and inline SVG charts: no scripts, no fonts, no network. Sections whose inputs
are missing are skipped with a note; missing optional fields only drop the parts that need them.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from loradial.errors import LoradialError
from loradial.io import atomic_write_text, check_out_not_overlapping
from loradial.result import Result

__all__ = ["ReportResult", "report"]


@dataclasses.dataclass
class ReportResult(Result):
    """Where the report was written and what it shows."""

    path: str
    sections: list[str]
    """Rendered sections, in order: a subset of 'tune', 'sweep', 'analysis', 'plan'."""
    charts: int = 0
    """Number of charts (inline SVG figures) in the report."""
    notes: list[str] = dataclasses.field(default_factory=list)
    """Why a section or a part of one was left out."""
    inputs: list[str] = dataclasses.field(default_factory=list)
    """The files the report was built from."""


def report(dir: str | os.PathLike, out: str | os.PathLike | None = None) -> ReportResult:
    """Render DIR's sweep / analysis / plan results into one HTML file (default DIR/report.html), atomically."""
    from loradial.reports.load import load_analysis, load_plan, load_sweep
    from loradial.reports.render import render_html

    root = Path(dir)
    if not root.exists():
        raise LoradialError(f"directory not found: {root}", "give the directory of a sweep, an analysis or a demo run")
    if not root.is_dir():
        raise LoradialError(f"{root} is not a directory", "give the directory that holds results.json or analysis.json")
    target = Path(out) if out is not None else root / "report.html"
    if target.is_dir():
        raise LoradialError(f"--out {target} is a directory", "give a file name such as report.html")
    notes: list[str] = []
    sweep, analysis, plan = load_sweep(root, notes), load_analysis(root, notes), load_plan(root, notes)
    if sweep is None and analysis is None and plan is None:
        raise LoradialError(
            f"nothing to report in {root}: no results.json, metrics.jsonl, analysis.json or plan.json",
            "point at a sweep directory, or save `loradial analyze ... --json` as analysis.json "
            "(or `loradial plan ... --json` as plan.json) in the directory",
        )
    tune = _read_tune(root, notes)
    html, sections, charts = render_html(root, sweep, analysis, plan, notes, tune)
    inputs = [*(sweep.files if sweep else []), *([str(analysis.path)] if analysis else []),
              *([analysis.scale_source] if analysis and analysis.scale_source and analysis.scale_source != str(analysis.path) else []),
              *([str(plan.path)] if plan else [])]
    check_out_not_overlapping(target, [("directory", root), ("tune.json", root / "tune.json"),
                                       *(("input", i) for i in inputs)], out_is_file=True)
    atomic_write_text(target, html)
    return ReportResult(str(target), sections, charts, notes, inputs)


def _read_tune(root: Path, notes: list[str]) -> dict | None:
    """tune.json of a `loradial tune` directory (its 'Why this config' section), if there is one."""
    import json

    path = root / "tune.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        notes.append(f"tune.json could not be read ({type(e).__name__}); 'Why this config' not shown.")
        return None
    return data if isinstance(data, dict) else None
