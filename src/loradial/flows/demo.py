"""``loradial demo``: the whole loop on the bundled model and data, offline, on a CPU, in minutes.

The bundled model (``assets/demo-model``, a 4M-parameter Llama pretrained on the Python
documentation) meets a domain shift (``assets/demo-data``: Python standard-library *source*).
The demo chains the public verbs, nothing of its own:

1. ``loradial.plan``         exact cost of every rank on all-linear targets  -> ``plan.json``
2. ``loradial.sweep``        ranks x alpha ratios trained at once on one base -> ``sweep/``
3. ``loradial.analyze``      singular spectra of the best adapter            -> ``analysis/analysis.json``
4. ``loradial.alpha_sweep``  eval loss of base + c * adapter (c = 0: base)    -> ``analysis/alpha_sweep.json``
5. ``loradial.report``       one self-contained HTML file                     -> ``report.html``

The base model's eval loss (the alpha-sweep at c = 0, on the same eval file and max length as the
sweep) is added to ``sweep/results.json`` as ``base_eval_loss`` so the report draws it.
Layout of ``out`` is what ``loradial.reports.load`` looks for (docs/report.md, "Files and fields read").
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

from loradial.errors import LoradialError
from loradial.io import atomic_write_json, atomic_write_text, check_out_not_overlapping, read_json
from loradial.result import Result

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEMO_MODEL = ASSETS / "demo-model"
DEMO_DATA = ASSETS / "demo-data"
MARKER = ".loradial-demo"
DEFAULT_OUT = "loradial-demo"
DEFAULT_STEPS = 80
DEFAULT_RANKS = (2, 4, 8, 16)
DEFAULT_ALPHA_RATIOS = (1, 2)
SCALES = (0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 2)


@dataclasses.dataclass
class DemoResult(Result):
    """Where everything went, and the numbers that say whether rank mattered."""

    out: str
    report: str
    model: str
    steps: int
    base_eval_loss: float
    """Eval loss of the base model alone (alpha-sweep at scale 0)."""
    best: str | None
    best_eval_loss: float | None
    eval_loss_by_rank: dict[str, float]
    """Best eval loss over the alpha ratios, per rank."""
    configs: list[dict[str, Any]]
    recommended_rank: int | None
    """From the spectrum of the best adapter (``analyze``)."""
    best_scale: float
    """Adapter strength with the lowest eval loss (``alpha-sweep``)."""
    files: dict[str, str]
    timings: dict[str, float]
    wall_seconds: float
    notes: list[str] = dataclasses.field(default_factory=list)


def prepare_out(out: str | Path) -> Path:
    """An empty directory for the demo: new, empty, or a previous demo's (cleared); else refuse."""
    root = Path(out)
    check_out_not_overlapping(root, [("bundled demo assets", ASSETS)])
    if root.exists() and not root.is_dir():
        raise LoradialError(f"output path {root} exists and is a file", "choose a directory with --out")
    if root.is_dir() and any(root.iterdir()):
        if not (root / MARKER).is_file():
            raise LoradialError(f"output directory {root} is not empty and was not written by `loradial demo`",
                                "choose a new (or empty) directory with --out")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / MARKER, "written by `loradial demo`; a rerun into this directory replaces it\n")
    return root


def _eval_subset(dest: Path, n: int) -> Path:
    """The first ``n`` records of the bundled eval set (the demo evaluates often; 300 is slow on CPU)."""
    lines = [ln for ln in (DEMO_DATA / "eval.jsonl").read_text(encoding="utf-8").splitlines() if ln.strip()]
    atomic_write_text(dest, "\n".join(lines[:n]) + "\n")
    return dest


def demo(
    out: str | Path = DEFAULT_OUT,
    *,
    steps: int | None = DEFAULT_STEPS,
    ranks: Sequence[int] = DEFAULT_RANKS,
    alpha_ratios: Sequence[float] = DEFAULT_ALPHA_RATIOS,
    learning_rate: float = 2e-3,
    batch_size: int = 4,
    max_len: int = 96,
    eval_examples: int = 64,
    threads: int | None = 1,
    progress: bool = False,
) -> DemoResult:
    """Plan -> sweep -> analyze the best adapter -> alpha-sweep -> HTML report, all in ``out``.

    ``threads``: torch CPU threads during the demo (restored after); 1 is fastest on a busy
    machine (measured in scripts/demo_model/README.md). ``progress`` prints stages and bars on stderr.
    """
    import torch

    from loradial.adapters.analysis import analyze
    from loradial.adapters.evaluate import alpha_sweep
    from loradial.cost.planning import plan
    from loradial.reports.api import report
    from loradial.sweeps.api import sweep

    steps = DEFAULT_STEPS if steps is None else steps
    if steps < 1:
        raise LoradialError(f"--steps must be at least 1, got {steps}", "e.g. --steps 80")
    if threads is not None and threads < 1:
        raise LoradialError(f"--threads must be at least 1, got {threads}", "e.g. --threads 1 (fastest on a busy machine)")
    if not DEMO_MODEL.is_dir() or not (DEMO_DATA / "train.jsonl").is_file():
        raise LoradialError(f"the bundled demo model or data is missing under {ASSETS}",
                            "reinstall loradial (the assets ship as package data)")
    ranks = sorted({int(r) for r in ranks})
    console = None
    if progress:
        from rich.console import Console

        console = Console(stderr=True, highlight=False)

    def say(text: str) -> None:
        if console is not None:
            console.print(text, soft_wrap=True)

    t_all = time.time()
    timings: dict[str, float] = {}
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        root = prepare_out(out)
        eval_path = _eval_subset(root / "data" / "eval.jsonl", eval_examples)
        model, train_path = str(DEMO_MODEL), str(DEMO_DATA / "train.jsonl")
        n_cfg = len(ranks) * len(alpha_ratios)

        say(f"[bold]1/5 plan[/] exact cost of ranks {ranks} on all-linear of the bundled 4M-parameter Llama")
        t = time.time()
        p = plan(model, ranks, ["all-linear"], batch_size=batch_size * n_cfg, seq_len=max_len, dtype="fp32")
        atomic_write_json(root / "plan.json", p.to_dict())
        timings["plan"] = time.time() - t

        say(f"[bold]2/5 sweep[/] {n_cfg} configs (ranks {ranks} x alpha = {list(alpha_ratios)} x r) trained at once, "
            f"{steps} steps, on Python source the model never saw")
        t = time.time()
        sw = sweep(model, train_path, out=root / "sweep", ranks=ranks,
                   alphas="ratio:" + ",".join(f"{a:g}" for a in alpha_ratios), targets=["all-linear"],
                   lrs=[learning_rate], steps=steps, batch_size=batch_size, max_len=max_len, eval_data=str(eval_path),
                   eval_every=max(5, steps // 4), devices=["cpu"], dtype="fp32", progress=progress)
        timings["sweep"] = time.time() - t
        if sw.best is None:
            raise LoradialError("the sweep produced no best config", "rerun with more --steps")
        best_dir = root / "sweep" / "adapters" / sw.best

        say(f"[bold]3/5 analyze[/] singular spectrum of the best adapter, {sw.best}")
        t = time.time()
        an = analyze(best_dir, base=model, progress=progress)
        atomic_write_json(root / "analysis" / "analysis.json", an.to_dict())
        timings["analyze"] = time.time() - t

        say(f"[bold]4/5 alpha-sweep[/] eval loss of base + c x adapter for c in {list(SCALES)}")
        t = time.time()
        al = alpha_sweep(best_dir, model, eval_path, scales=SCALES, max_len=max_len, batch_size=16)
        atomic_write_json(root / "analysis" / "alpha_sweep.json", al.to_dict())
        timings["alpha_sweep"] = time.time() - t
        base_loss = al.losses[al.scales.index(0.0)]

        results_path = root / "sweep" / "results.json"
        results = read_json(results_path, "sweep results")
        results["base_eval_loss"] = base_loss
        atomic_write_json(results_path, results)

        say("[bold]5/5 report[/] one self-contained HTML file")
        t = time.time()
        rep = report(root)
        timings["report"] = time.time() - t

        configs = [{k: c.get(k) for k in ("name", "r", "lora_alpha", "trainable_params", "best_eval_loss", "final_train_loss")}
                   for c in sw.configs]
        by_rank: dict[str, float] = {}
        for c in configs:
            if c["best_eval_loss"] is not None:
                key = str(c["r"])
                by_rank[key] = min(by_rank.get(key, float("inf")), float(c["best_eval_loss"]))
        best_loss = next((c["best_eval_loss"] for c in configs if c["name"] == sw.best), None)
        notes = []
        if best_loss is not None and not best_loss < base_loss:
            notes.append(f"the best adapter ({best_loss:.3f}) did not beat the base model ({base_loss:.3f}); try more --steps")
        res = DemoResult(
            out=str(root), report=rep.path, model=model, steps=steps, base_eval_loss=base_loss, best=sw.best,
            best_eval_loss=best_loss, eval_loss_by_rank=by_rank, configs=configs,
            recommended_rank=(an.recommendation or {}).get("rank"), best_scale=al.best_scale,
            files={"plan": str(root / "plan.json"), "sweep": str(root / "sweep"), "best_adapter": str(best_dir),
                   "analysis": str(root / "analysis" / "analysis.json"),
                   "alpha_sweep": str(root / "analysis" / "alpha_sweep.json"), "report": rep.path},
            timings={k: round(v, 2) for k, v in timings.items()}, wall_seconds=round(time.time() - t_all, 2), notes=notes,
        )
        atomic_write_json(root / "demo.json", res.to_dict())
        return res
    finally:
        torch.set_num_threads(old_threads)
