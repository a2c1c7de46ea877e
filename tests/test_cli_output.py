"""Human CLI output when stderr is not a terminal (nohup, SLURM logs, CI): nothing truncated."""

from __future__ import annotations

import json

import pytest
from rich.table import Table

from loradial.console import LOG_WIDTH, _Console, log_width


def test_models_names_whole_when_not_a_tty(cli, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    code, out, err = cli("models")
    assert code == 0 and out == ""
    assert "mistral-7b-instruct-v0.3" in err and "mistralai/Mistral-7B-Instruct-v0.3" in err
    assert "…" not in err


def test_log_width_from_columns(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    assert log_width() == LOG_WIDTH
    monkeypatch.setenv("COLUMNS", "123")
    assert log_width() == 123


@pytest.mark.parametrize("columns", [None, "40"])
def test_tables_widen_instead_of_truncating(monkeypatch, columns):
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    import io

    buf = io.StringIO()
    c = _Console(file=buf, highlight=False)
    t = Table()
    for col in ("config", "eval loss", "verdict"):
        t.add_column(col)
    cell = "r16-a32-lora-lr2e-04-" + "x" * 250  # wider than any log width
    t.add_row(cell, "4.123456", "healthy")
    c.print(t)
    text = buf.getvalue()
    assert cell in text and "4.123456" in text and "healthy" in text and "…" not in text


def test_terminal_width_unchanged(monkeypatch):
    import io

    monkeypatch.delenv("COLUMNS", raising=False)
    c = _Console(file=io.StringIO(), force_terminal=True, width=60)
    assert c.width == 60  # a terminal (or an explicit width) keeps rich's own behaviour


def test_resize_table_uses_short_type_names(tmp_path, cli):
    from test_adapter_support import peft_adapter

    _, path = peft_adapter(tmp_path, r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"])
    code, out, err = cli("resize", path, "--rank", "2", "--out", tmp_path / "r2")
    assert code == 0, err
    assert "self_attn.q_proj" in err and "mlp.down_proj" in err
    assert "model.layers.*" not in err
    assert json.loads((tmp_path / "r2" / "adapter_config.json").read_text())["r"] == 2


# --- error messages: a reason and a hint ---------------------------------------------------------
def test_malformed_config_error_names_the_reason(tmp_path, cli):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": "abc"}))
    code, out, err = cli("plan", "--model", tmp_path)
    assert code == 2
    line = err.splitlines()[0]
    assert "hidden_size" in line and "expected int" in line and not line.rstrip().endswith(":")


@pytest.mark.parametrize("pattern", ["q_proj=x", "q_proj=0", "([=4", "q_proj"])
def test_bad_rank_pattern_has_a_hint(cli, pattern):
    code, out, err = cli("plan", "--model", "llama-2-7b", "--rank-pattern", pattern)
    assert code == 2 and "hint:" in err and "q_proj=4" in err


def test_rescale_bad_to_has_a_hint(tmp_path, cli):
    code, out, err = cli("rescale", tmp_path, "--to", "foo", "--out", tmp_path / "o")
    assert code == 2 and "'lora' or 'rslora'" in err and "hint:" in err
