"""`loradial report`: the HTML report from sweep / analysis / plan outputs (no browser; see
test_report_browser.py for the rendering check in headless Chromium)."""

from __future__ import annotations

import html.parser
import importlib.util
import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import loradial
from loradial.errors import LoradialError
from loradial.reports import svg
from loradial.reports.plots import cumulative_energy, ema, short_types

DATA = Path(__file__).parent / "data" / "report"
DEMO = DATA / "demo"
EVIL = "<script>alert(1)</script>"


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    dst = tmp_path / "demo"
    shutil.copytree(DEMO, dst)
    return dst


def charts(text: str) -> list[str]:
    return re.findall(r'<svg class="chart".*?</svg>', text, flags=re.S)


class TagCollector(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append((tag, dict(attrs)))


def assert_self_contained(text: str) -> None:
    p = TagCollector()
    p.feed(text)
    names = {t for t, _ in p.tags}
    assert not names & {"script", "link", "iframe", "img", "object", "embed", "base"}, names
    for tag, attrs in p.tags:
        for key, value in attrs.items():
            assert not key.startswith("on"), (tag, key)
            assert key not in ("src", "srcset"), (tag, key)
            if key == "href":
                assert value.startswith("#"), (tag, value)
    urls = re.findall(r"https?://[^\s\"'<>)]+", text)
    assert set(urls) <= {"http://www.w3.org/2000/svg"}, set(urls)
    assert "@import" not in text
    assert set(re.findall(r"url\(([^)]*)\)", text)) <= {f"#{m}" for m in re.findall(r'id="([^"]+)"', text)}


def test_fixtures_are_what_the_script_writes(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_fixtures", DATA / "make_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(tmp_path / "demo")
    for f in sorted(p for p in DEMO.rglob("*") if p.is_file() and p.name != "report.html"):
        assert (tmp_path / "demo" / f.relative_to(DEMO)).read_bytes() == f.read_bytes(), f


def test_full_report(demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "r" / "report.html"
    res = loradial.report(demo, out=out)
    assert res.path == str(out) and out.is_file()
    assert res.sections == ["sweep", "analysis", "plan"]
    assert res.notes == []
    text = out.read_text()
    figs = charts(text)
    # 3 loss panels + eval-vs-rank + lr fit; 7 spectra + heatmap + truncation + scale; params + memory
    assert len(figs) == res.charts == 17
    for f in figs:
        ET.fromstring(f)  # every chart is well-formed SVG (so every string in it was escaped)
    assert_self_contained(text)
    d = res.to_dict()
    assert d["schema_version"] == 1 and d["sections"] == res.sections and len(d["inputs"]) == 5
    # the answer first: best config, recommended ranks, best scale, cost
    head = text.split('<main', 1)[0]
    assert "r32-a64-rslora-lr1.4e-4" in head and "r = 16" in head and "r=8" in head and "× 0.75" in head
    assert text.count('class="best"') == 1  # one highlighted row in the results table
    rows = re.findall(r"<tr(?: class=\"best\")?><td><span class=\"sw\"[^>]*></span>([^<]+)<", text)
    configs = json.loads((DEMO / "sweep" / "results.json").read_text())["configs"]
    assert [r.strip() for r in rows] == [c["name"] for c in sorted(configs, key=lambda c: c["best_eval_loss"])]
    for needle in ("Loss curves", "against rank", "Learning rate against rank", "Effective rank by layer",
                   "Truncation curve", "Adapter scale curve", "Trainable parameters", "peak training memory",
                   "self_attn.q_proj", "mlp.down_proj", "prefers-color-scheme: dark"):
        assert needle in text, needle


def test_default_output_is_dir_report_html_and_atomic(demo: Path) -> None:
    (demo / "report.html").write_text("old")
    res = loradial.report(demo)
    assert Path(res.path) == demo / "report.html"
    assert (demo / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert not [p for p in demo.iterdir() if p.name.startswith(".report.html")]  # no temporary left behind


def test_user_strings_are_escaped(demo: Path, tmp_path: Path) -> None:
    sweep = demo / "sweep"
    results = json.loads((sweep / "results.json").read_text())
    old = results["best"]
    results["best"] = EVIL
    for c in results["configs"]:
        if c["name"] == old:
            c["name"] = EVIL
    (sweep / "results.json").write_text(json.dumps(results))
    metrics = (sweep / "metrics.jsonl").read_text().replace(f'"{old}"', json.dumps(EVIL))
    (sweep / "metrics.jsonl").write_text(metrics)
    (sweep / "sweep.yaml").write_text((sweep / "sweep.yaml").read_text().replace(
        "model: tiny-llama-demo", "model: '\"><img src=x onerror=alert(2)>'"))
    an = json.loads((demo / "analysis" / "analysis.json").read_text())
    an["modules"][0]["name"] = "base_model.model.model.layers.0.<b onmouseover=alert(3)>x"
    an["adapter"] = "</code><script>alert(4)</script>"
    an["recommendation"]["rank_pattern"] = {"<i>evil</i>": 4}
    (demo / "analysis" / "analysis.json").write_text(json.dumps(an))
    plan = json.loads((demo / "plan.json").read_text())
    plan["rows"][0]["targets"] = ["<svg onload=alert(5)>"]
    plan["rows"][0]["modules"][0]["name"] = "</text><script>alert(6)</script>"
    (demo / "plan.json").write_text(json.dumps(plan))

    res = loradial.report(demo, out=tmp_path / "evil.html")
    text = Path(res.path).read_text()
    assert "<script" not in text and "<img" not in text and "<b " not in text and "<i>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;img src=x onerror=alert(2)&gt;" in text
    assert_self_contained(text)
    for f in charts(text):
        ET.fromstring(f)
    assert len(charts(text)) == res.charts


def test_sweep_in_progress_metrics_only(tmp_path: Path) -> None:
    d = tmp_path / "sweep"
    d.mkdir()
    lines = [json.dumps({"step": s, "adapter": f"r{r}-a{2 * r}-lora", "loss": 3 - s / 100 - r / 100}) for s in range(1, 60)
             for r in (4, 16)]
    lines += [json.dumps({"step": 50, "adapter": "r4-a8-lora", "eval_loss": 2.6}), "not json", '{"step": 61, "adapt']
    (d / "metrics.jsonl").write_text("\n".join(lines))
    res = loradial.report(d)
    assert res.sections == ["sweep"]
    assert any("results.json" in n for n in res.notes) and any("unreadable line" in n for n in res.notes)
    text = Path(res.path).read_text()
    assert res.charts == len(charts(text)) == 1  # one loss panel; nothing else without results.json
    assert "r = 4" in text and "r = 16" in text  # ranks read from the config names


def test_minimal_fields_degrade_gracefully(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text(json.dumps({"configs": [{"name": "a", "best_eval_loss": 2.0, "r": 8},
                                                                   {"name": "b", "best_eval_loss": None}]}))
    (tmp_path / "analysis.json").write_text(json.dumps({"modules": [{"name": "x.0.q", "singular_values": [3, 2, 1]},
                                                                    {"name": "y", "singular_values": []}]}))
    (tmp_path / "plan.json").write_text(json.dumps({"rows": [{"rank": 8, "targets": "q"}]}))
    res = loradial.report(tmp_path)
    assert res.sections == ["sweep", "analysis", "plan"]
    text = Path(res.path).read_text()
    assert res.charts == len(charts(text)) == 2  # eval vs rank (one point) and one spectrum
    assert '<tr class="best">' in text  # best inferred as the lowest eval loss
    assert_self_contained(text)


def test_alpha_sweep_file_and_malformed_inputs(tmp_path: Path) -> None:
    (tmp_path / "alpha-sweep").mkdir()
    (tmp_path / "alpha-sweep" / "alpha_sweep.json").write_text(json.dumps(
        {"points": [{"scale": s, "eval_loss": 2 + (s - 0.5) ** 2} for s in (0, 0.5, 1)]}))
    (tmp_path / "plan.json").write_text("{not json")
    res = loradial.report(tmp_path)
    assert res.sections == ["analysis"]
    assert any("plan.json could not be read" in n for n in res.notes)
    text = Path(res.path).read_text()
    assert "× 0.5" in text and res.charts == 1


def test_errors_write_nothing(tmp_path: Path) -> None:
    with pytest.raises(LoradialError, match="not found"):
        loradial.report(tmp_path / "missing")
    with pytest.raises(LoradialError, match="nothing to report"):
        loradial.report(tmp_path)
    (tmp_path / "plan.json").write_text(json.dumps({"rows": [{"rank": 8, "targets": "q"}]}))
    (tmp_path / "outdir").mkdir()
    with pytest.raises(LoradialError, match="is a directory"):
        loradial.report(tmp_path, out=tmp_path / "outdir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outdir", "plan.json"]


def test_cli(demo: Path, tmp_path: Path, cli) -> None:
    code, out, err = cli("report", demo / "sweep", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["sections"] == ["sweep"] and doc["path"] == str(demo / "sweep" / "report.html")
    code, out, err = cli("report", demo, "--out", tmp_path / "x.html")
    assert code == 0 and out == "" and "x.html" in err
    code, out, err = cli("report", tmp_path / "nope")
    assert code == 2 and "error:" in err and "Traceback" not in err


def test_svg_helpers() -> None:
    assert svg.nice_ticks(0, 1, 5) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert svg.Scale(4, 64, 0, 100, "log2").ticks() == [4, 8, 16, 32, 64]
    assert svg.Scale(1e-4, 1e-3, 0, 1, "log10").ticks() == [1e-4, 2e-4, 5e-4, 1e-3]
    assert [svg.fmt_num(v) for v in (0.0002, 12000, 2.5, 0)] == ["2e-4", "12k", "2.5", "0"]
    assert svg.esc('<a href="x">') == "&lt;a href=&quot;x&quot;&gt;"
    assert len(svg.thin(list(range(1000)), 100)) <= 101 and svg.thin(list(range(1000)), 100)[-1] == 999
    assert cumulative_energy([2.0, 1.0]) == [0.8, 1.0]
    assert short_types(["m.layers.*.self_attn.q_proj", "m.layers.*.mlp.up_proj"]) == {
        "m.layers.*.self_attn.q_proj": "self_attn.q_proj", "m.layers.*.mlp.up_proj": "mlp.up_proj"}
    assert [round(y, 6) for _, y in ema([(1, 1.0), (2, 1.0)])] == [1.0, 1.0]  # bias-corrected


def test_report_is_the_verb_even_after_its_package_is_imported() -> None:
    import importlib

    importlib.import_module("loradial.reports.api")
    assert loradial.report is importlib.import_module("loradial.reports.api").report


def test_gap_column_is_train_minus_eval_as_in_results_json(tmp_path: Path) -> None:
    from loradial.reports.load import load_sweep
    from loradial.reports.render import sweep_section
    from loradial.sweeps.results import config_result

    stored = config_result({"name": "a", "r": 8}, {"train": [(1, 2.0, 0), (2, 1.5, 0)], "eval": [(2, 1.8)]},
                           trainable_params=1, steps=2, stopped_at=None, pack=0, train_seconds=1.0, peak_memory_bytes=None)
    assert stored["gap"] == pytest.approx(1.5 - 1.8)  # the sweep's own sign: train - eval
    unstored = {"name": "b", "r": 4, "final_train_loss": 1.0, "final_eval_loss": 1.25, "best_eval_loss": 1.25}
    (tmp_path / "results.json").write_text(json.dumps({"configs": [stored, unstored]}))
    table = sweep_section(load_sweep(tmp_path, []))["table"]
    col = table["head"].index("gap (train − eval)")
    assert [row["cells"][col]["text"] for row in table["rows"]] == ["-0.250", "-0.300"]  # b then a (best eval)
    assert "eval − train" not in Path(loradial.report(tmp_path).path).read_text()
