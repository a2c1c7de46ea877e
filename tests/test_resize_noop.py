"""resize to a rank that cuts nothing: refused when no module changes, warned when some do not;
analyze does not advise resizing an adapter that already uses its rank."""

from __future__ import annotations

import json

import pytest

from loradial.adapters.analysis import analyze
from loradial.errors import LoradialError
from loradial.adapters.surgery import resize
from test_adapter_support import peft_adapter


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("noop")
    _, r8 = peft_adapter(tmp, name="r8", r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    _, mixed = peft_adapter(tmp, name="mixed", r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                            rank_pattern={"v_proj": 2})
    return r8, mixed


@pytest.mark.parametrize("rank", [8, 64])
def test_resize_rank_not_below_r_is_refused(adapters, tmp_path, cli, rank):
    with pytest.raises(LoradialError, match=f"nothing to resize: --rank {rank} is not below") as e:
        resize(adapters[0], tmp_path / "o", rank=rank)
    assert "already rank 8" in e.value.hint and e.value.exit_code == 2
    code, out, err = cli("resize", adapters[0], "--rank", str(rank), "--out", tmp_path / "o")
    assert code == 2 and "already rank 8" in err
    assert not (tmp_path / "o").exists()


def test_resize_energy_and_budget_that_cut_nothing_are_refused(adapters, tmp_path):
    with pytest.raises(LoradialError, match="nothing to resize"):
        resize(adapters[0], tmp_path / "o", energy=1.0)
    with pytest.raises(LoradialError, match="covers the whole adapter"):
        resize(adapters[0], tmp_path / "o", budget=10**9)
    assert not (tmp_path / "o").exists()


def test_resize_some_modules_unchanged_warns_and_writes(adapters, tmp_path, cli):
    res = resize(adapters[1], tmp_path / "o", rank=4)
    assert len(res.warnings) == 1 and "2 of 4 modules already have rank ≤ 4" in res.warnings[0]
    assert sorted(set(res.ranks.values())) == [2, 4]
    code, out, err = cli("resize", adapters[1], "--rank", "4", "--out", tmp_path / "c", "--json")
    assert code == 0 and "warning:" in err and json.loads(out)["warnings"] == res.warnings
    res = resize(adapters[1], tmp_path / "o2", rank=1)
    assert res.warnings == []


def test_analyze_does_not_advise_resizing_to_the_trained_rank(adapters):
    res = analyze(adapters[0])  # random factors: every rank carries energy
    rec = res.recommendation
    assert rec["rank"] == 8 and rec["already_at_rank"]
    assert any("already uses its rank 8" in n for n in res.notes)
    res = analyze(adapters[0], energy=0.3, coverage=0.5)
    assert res.recommendation["rank"] < 8 and not res.recommendation["already_at_rank"]
    assert not any("already uses" in n for n in res.notes)
