"""--metric exact_match: greedy decoding of the eval completions, batched with left padding; the sweep
picks by it and reports it beside eval loss; data without answers is refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import loradial
from loradial.adapters.generate import exact_match, prompts_and_answers
from loradial.sweeps.results import pick_best

DEMO = Path(loradial.__file__).parent / "assets"


@pytest.fixture(scope="module")
def demo():
    from loradial.models.load import load_model

    return load_model(DEMO / "demo-model", dtype="fp32", device="cpu", local_only=True, frozen=True)


def _greedy(model, tok, prompt: str, n: int) -> str:
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_exact_match_scores_the_models_own_greedy_answer_as_right_and_others_as_wrong(demo):
    model, tok = demo
    prompts = ["def add(a, b):", "import os", "class Foo:\n    def"]  # different lengths: left padding matters
    answers = [_greedy(model, tok, p, 5) for p in prompts]
    right = prompts_and_answers([{"prompt": p, "completion": a} for p, a in zip(prompts, answers)], tok)
    wrong = prompts_and_answers([{"prompt": p, "completion": a + " x"} for p, a in zip(prompts, answers)], tok)
    assert exact_match(model, tok, right, max_new_tokens=5, batch_size=3) == 1.0  # one batch, padded
    assert exact_match(model, tok, right, max_new_tokens=5, batch_size=1) == 1.0
    assert exact_match(model, tok, wrong, max_new_tokens=5, batch_size=3) == 0.0
    mixed = [right[0], wrong[1], right[2]]
    assert exact_match(model, tok, mixed, max_new_tokens=5, batch_size=2) == pytest.approx(2 / 3)


def test_chat_records_are_prompted_with_the_template_and_text_is_refused(demo):
    _, tok = demo
    pairs = prompts_and_answers([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}], tok)
    assert pairs[0][1] == "yo"
    assert tok.decode(pairs[0][0]).endswith(tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                                     add_generation_prompt=True)[-10:])
    with pytest.raises(loradial.LoradialError, match="plain text"):
        prompts_and_answers([{"text": "just text"}], tok)


def test_pick_best_by_exact_match_then_eval_loss():
    rows = [dict(name="a", best_eval_loss=1.0, trainable_params=1, exact_match=0.5),
            dict(name="b", best_eval_loss=2.0, trainable_params=1, exact_match=0.7),
            dict(name="c", best_eval_loss=1.5, trainable_params=1, exact_match=0.7),
            dict(name="d", best_eval_loss=0.5, trainable_params=1, exact_match=None)]
    assert pick_best(rows, "exact_match") == "c" and pick_best(rows) == "d"


def test_sweep_reports_exact_match_and_refuses_data_without_answers(tmp_path, cli):
    train, ev = tmp_path / "t.jsonl", tmp_path / "e.jsonl"
    recs = [{"prompt": f"{a} + {a} =", "completion": f" {2 * a}"} for a in range(40)]
    train.write_text("".join(json.dumps(r) + "\n" for r in recs[:32]))
    ev.write_text("".join(json.dumps(r) + "\n" for r in recs[32:]))
    base = ["sweep", "--model", DEMO / "demo-model", "--data", train, "--ranks", "2,4", "--lr", "3e-3", "--steps", "4",
            "--max-len", "32", "--targets", "q_proj,v_proj"]
    code, out, err = cli(*base, "--eval-data", ev, "--metric", "exact_match", "--max-new-tokens", "4", "--json",
                         "--out", tmp_path / "ok")
    assert code == 0, err
    res = json.loads(out)
    assert all(isinstance(c["exact_match"], float) and 0 <= c["exact_match"] <= 1 for c in res["configs"])
    assert res["settings"]["metric"] == "exact_match"
    code, _, err = cli(*base, "--metric", "exact_match", "--out", tmp_path / "no-eval")
    assert code == 2 and "needs --eval-data" in err and not (tmp_path / "no-eval").exists()
    (tmp_path / "text.jsonl").write_text('{"text": "a b c"}\n' * 8)
    code, _, err = cli(*base, "--eval-data", tmp_path / "text.jsonl", "--metric", "exact_match", "--out", tmp_path / "txt")
    assert code == 2 and "plain text" in err and not (tmp_path / "txt").exists()
