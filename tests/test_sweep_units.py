"""Pure parts of the sweep: halving rungs and survivors, memory packing, results, directory rules."""

from __future__ import annotations

import math

import pytest

from loradial.errors import LoradialError
from loradial.sweeps.halving import adapter_steps, parse_fractions, rung_boundaries, survivors
from loradial.sweeps.pack import GiB, ConfigCost, config_cost, make_packs, pack_bytes
from loradial.sweeps.results import config_result, curves, lr_rank_fit, pick_best, sort_for_table, verdicts
from loradial.sweeps.runner import eval_steps
from loradial.sweeps.state import SweepDir, check_new_sweep_dir


# --- halving ---------------------------------------------------------------------------------------
def test_rungs_at_fixed_fractions():
    assert rung_boundaries(100, None) == [100]
    assert rung_boundaries(100, (0.25, 0.5)) == [25, 50, 100]
    assert rung_boundaries(3, (0.1, 0.5)) == [2, 3]  # round(0.3) = 0 is dropped, round(1.5) = 2
    assert parse_fractions(None) == (0.25, 0.5) and parse_fractions("0.5,0.25") == (0.25, 0.5)
    for bad in ("0", "1", "x", "1.5", ","):
        with pytest.raises(LoradialError):
            parse_fractions(bad)
    # 8 configs: 8 x 25 + 4 x 25 + 2 x 50 = 400 adapter-steps instead of 800
    assert adapter_steps(8, [25, 50, 100]) == 400


def test_survivors_keep_the_better_half_ties_to_fewer_params():
    scores = {"a": 1.0, "b": 2.0, "c": 1.0, "d": float("nan"), "e": 0.5}
    params = {"a": 10, "b": 1, "c": 5, "d": 1, "e": 100}
    assert survivors(scores, params) == ["e", "c", "a"]  # ceil(5/2) = 3; c beats a on params
    assert survivors({"x": math.nan, "y": None}, {"x": 1, "y": 1}) == ["x"]  # all diverged: one goes on
    assert survivors({"x": 2.0, "y": math.inf}, {}) == ["x"]


# --- packing ---------------------------------------------------------------------------------------
def test_config_cost_splits_shared_and_marginal():
    c = config_cost("a", lambda n: 100 + 10 * n)
    assert (c.shared, c.marginal, c.alone) == (100, 10, 110)
    assert pack_bytes([c, ConfigCost("b", 120, 5)]) == 120 + 15


def test_make_packs_first_fit_under_budget():
    costs = [ConfigCost(n, 100, 10) for n in "abcde"]
    assert make_packs(costs, None) == [list("abcde")]
    assert make_packs(costs, 125) == [["a", "b"], ["c", "d"], ["e"]]
    assert make_packs(costs, None, max_pack=2) == [["a", "b"], ["c", "d"], ["e"]]
    assert make_packs(costs, None, group=lambda n: n in "ab") == [["a", "b"], ["c", "d", "e"]]


def test_config_that_cannot_fit_alone_says_how_much_it_needs():
    with pytest.raises(LoradialError) as e:
        make_packs([ConfigCost("r64-a64-lora-lr2e-4", 3 * GiB, GiB)], 2 * GiB)
    assert "r64-a64-lora-lr2e-4" in e.value.message and "4.00 GiB" in e.value.message and "2.00 GiB" in e.value.message


# --- results ---------------------------------------------------------------------------------------
def _lines(name, losses, evals):
    out = [{"step": i + 1, "adapter": name, "loss": x, "tokens": 10} for i, x in enumerate(losses)]
    out += [{"step": s, "adapter": name, "eval_loss": e} for s, e in evals]
    return out


def test_curves_replayed_steps_count_once():
    lines = _lines("a", [3.0, 2.0], [(2, 2.5)]) + [{"step": 2, "adapter": "a", "loss": 2.0, "tokens": 10}]
    c = curves(lines)["a"]
    assert [t[0] for t in c["train"]] == [1, 2] and c["eval"] == [(2, 2.5)]


def test_config_result_numbers():
    losses = [4.0] * 10 + [2.0] * 10  # last 10 % = 2 steps
    lines = _lines("a", losses, [(10, 3.0), (20, 2.5)])
    c = curves(lines)["a"]
    r = config_result({"name": "a"}, c, trainable_params=7, steps=20, stopped_at=None, pack=0, train_seconds=2.0,
                      peak_memory_bytes=None, verdict=verdicts(lines)["a"])
    assert r["final_train_loss"] == 2.0 and r["best_eval_loss"] == 2.5 and r["final_eval_loss"] == 2.5
    assert r["gap"] == pytest.approx(-0.5) and r["tokens_per_s"] == 100.0 and r["verdict"] in ("healthy", "too_few_steps")
    assert config_result({"name": "b"}, None, trainable_params=7, steps=0, stopped_at=None, pack=None, train_seconds=0.0,
                         peak_memory_bytes=None)["verdict"] == "not trained"


def test_verdicts_from_diagnose_and_diverged():
    falling = [3.0 * 0.97 ** i for i in range(40)]
    lines = _lines("ok", falling, [(20, 2.0), (40, 1.5)])
    lines += _lines("flat", [3.0 + 0.001 * (i % 3) for i in range(40)], [(20, 3.0), (40, 3.0)])
    lines += _lines("nan", falling[:5], []) + [{"step": 6, "adapter": "nan", "loss": None, "diverged": True}]
    lines += _lines("nan_eval", falling[:5], [(5, None)])
    v = verdicts(lines)
    assert v["nan"] == "diverged" and v["nan_eval"] == "diverged" and v["flat"] == "underfitting"
    assert v["ok"] in ("healthy", "too_few_steps")


def test_best_ties_go_to_fewer_params_and_table_order():
    rs = [{"name": "big", "best_eval_loss": 1.0, "trainable_params": 100},
          {"name": "small", "best_eval_loss": 1.0, "trainable_params": 10},
          {"name": "worse", "best_eval_loss": 1.5, "trainable_params": 1},
          {"name": "nan", "best_eval_loss": None, "trainable_params": 1}]
    assert pick_best(rs) == "small"
    assert [r["name"] for r in sort_for_table(rs)] == ["small", "big", "worse", "nan"]
    assert pick_best([{"name": "x", "best_eval_loss": None, "trainable_params": 1}]) is None


def test_lr_rank_fit_only_with_several_lrs_per_rank():
    exponent = 0.5
    rs = []
    for r in (4, 16, 64):
        opt = math.log(1e-3 * (r / 16) ** -exponent)
        for lr in (1e-4, 1e-3, 1e-2):
            rs.append({"r": r, "learning_rate": lr, "best_eval_loss": 2 + (math.log(lr) - opt) ** 2, "stopped_at": None})
    fit = lr_rank_fit(rs)
    assert fit["exponent"] == pytest.approx(exponent, abs=1e-6) and fit["spread"] == pytest.approx(0, abs=1e-6)
    assert lr_rank_fit([r for r in rs if r["learning_rate"] == 1e-3]) is None


# --- directory rules -------------------------------------------------------------------------------
def test_config_names_stay_safe_for_any_learning_rate():
    from loradial.sweeps.grid import config_name

    assert config_name(4, 8, "lora", 1e30) == "r4-a8-lora-lr1e30"
    assert config_name(4, 8, "lora", 2.5e6) == "r4-a8-lora-lr2.5e6"


def test_eval_points():
    assert eval_steps(0, 10, None) == [10]
    assert eval_steps(0, 10, 4) == [4, 8, 10]
    assert eval_steps(10, 20, 4) == [12, 16, 20]


def test_output_dir_rules(tmp_path):
    check_new_sweep_dir(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    check_new_sweep_dir(tmp_path / "empty")
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("x")
    with pytest.raises(LoradialError, match="not a sweep directory"):
        check_new_sweep_dir(other)
    (other / "sweep.yaml").write_text("configs: []")
    with pytest.raises(LoradialError, match="already holds a sweep"):
        check_new_sweep_dir(other)


def test_one_process_per_sweep(tmp_path):
    a, b = SweepDir(tmp_path), SweepDir(tmp_path)
    a.lock()
    try:
        with pytest.raises(LoradialError, match="running in another process"):
            b.lock()
    finally:
        a.unlock()
    b.lock()
    b.unlock()


def test_colliding_config_names_are_an_error():
    from loradial.errors import LoradialError
    from loradial.sweeps.grid import build_grid

    with pytest.raises(LoradialError, match="share the name"):
        build_grid([4], targets=["re:.*q_proj", "re:.*q.proj"])  # both sanitize to '-tre___q_proj'
    assert len(build_grid([4], alphas="8,8")) == 1  # the same point twice is one config


@pytest.mark.parametrize("verb, flag", [("sweep", ["--ranks", "4"]), ("sweep", ["--steps", "9"]),
                                        ("tune", ["--budget", "9"]), ("train", ["--lr", "1e-3"])])
def test_resume_with_settings_flags_is_refused_naming_them(cli, tmp_path, verb, flag):
    code, _, err = cli(verb, "--resume", tmp_path / "run", *flag)
    assert code == 2 and f"{flag[0]} would be ignored" in err and "Traceback" not in err
