import math

import pytest

from loradial.errors import LoradialError
from loradial.sweeps.grid import build_grid, config_name, fit_lr_rank_exponent, lr_for_rank, parse_alphas


def test_names_and_cross_product():
    grid = build_grid([8, 16], "ratio:1,2", ["lora", "rslora"], lrs=[2e-4])
    names = [c.name for c in grid]
    assert len(grid) == 8 and len(set(names)) == 8
    assert "r16-a32-rslora-lr2e-4" in names
    assert all(c.lora_alpha in (c.r, 2 * c.r) for c in grid)


def test_fixed_alphas_dedupe_and_seed_names():
    grid = build_grid([4], "16,16", seeds=[0, 1])
    assert [c.name for c in grid] == ["r4-a16-lora-lr2e-4-s0", "r4-a16-lora-lr2e-4-s1"]


def test_lr_rank_rule():
    assert lr_for_rank(2e-4, 16, 0.84) == pytest.approx(2e-4)
    assert lr_for_rank(2e-4, 64, 0.5) == pytest.approx(1e-4)
    grid = build_grid([64], lrs=[2e-4], lr_rank_exponent=0.5)
    assert grid[0].learning_rate == pytest.approx(1e-4) and grid[0].name == "r64-a64-lora-lr1e-4"


@pytest.mark.parametrize("kw", [dict(ranks=[]), dict(ranks=[0]), dict(ranks=[4], variants=["qlora"]),
                                dict(ranks=[4], lrs=[-1.0]), dict(ranks=[4], alphas="ratio:"), dict(ranks=[4], alphas="x")])
def test_bad_grids(kw):
    with pytest.raises(LoradialError):
        build_grid(**kw)


def test_config_name_targets_are_safe():
    assert config_name(8, 8, "lora", 1e-3, targets="q_proj,v_proj") == "r8-a8-lora-lr1e-3-tq_proj_v_proj"


def test_fit_recovers_planted_exponent():
    exponent = 0.5
    points = []
    for r in (4, 16, 64):
        opt = math.log(1e-3 * (r / 16) ** -exponent)
        for lr in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2):
            points.append((r, lr, 2.0 + (math.log(lr) - opt) ** 2))
    fit = fit_lr_rank_exponent(points)
    assert fit["exponent"] == pytest.approx(exponent, abs=1e-6)
    assert fit["spread"] == pytest.approx(0.0, abs=1e-6)
    assert fit_lr_rank_exponent([(4, 1e-3, 2.0), (8, 1e-3, 2.0)]) is None
