"""Our hook-based evaluation against PEFT's own forward, eval_loss against the model's own loss,
and alpha-sweep end to end (one load, scales applied in place)."""

from __future__ import annotations

import json

import peft
import pytest
import torch
from peft.helpers import rescale_adapter_scale

from loradial.adapters import evaluate as ev
from loradial.adapters.format import load_adapter
from loradial.errors import LoradialError
from loradial.adapters.surgery import resize, truncate_module
from test_adapter_support import made_adapters, tiny_model, tokens
from test_engine_fixtures import pc_records, save_tiny_model, tiny_llama, write_jsonl

CASES = {
    "lora_emb": dict(arch="llama", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "embed_tokens", "lm_head"]),
    "rslora_dora": dict(arch="llama", r=4, lora_alpha=6, target_modules="all-linear", use_rslora=True, use_dora=True),
    "gpt2_bias": dict(arch="gpt2", r=3, lora_alpha=5, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True, lora_bias=True),
    "gpt2_emb_dora": dict(arch="gpt2", r=3, lora_alpha=5, target_modules=["c_fc", "wte"], fan_in_fan_out=True, use_dora=True),
}


made = made_adapters(CASES)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("c", [1.0, 0.3])
def test_hooks_equal_peft_forward(made, case, c):
    pm, path = made[case]
    base = tiny_model(CASES[case]["arch"])
    x = tokens()
    with torch.no_grad(), ev.AdapterHooks(base, load_adapter(path)) as hooks:
        hooks.set_multiplier(c)
        ours = base(x).logits
        with rescale_adapter_scale(pm, c):
            ref = pm(x).logits
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        hooks.set_multiplier(0.0)  # s → 0 (for DoRA the magnitude still applies, as in PEFT)
        with rescale_adapter_scale(pm, 0.0):
            torch.testing.assert_close(base(x).logits, pm(x).logits, rtol=1e-5, atol=1e-5)
        hooks.enabled = False
        with pm.disable_adapter():
            torch.testing.assert_close(base(x).logits, pm(x).logits, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # hooks removed: the plain base again
        torch.testing.assert_close(base(x).logits, tiny_model(CASES[case]["arch"])(x).logits)


def test_swapped_factors_equal_resized_adapter(made, tmp_path):
    """The truncation-curve path: swap in rank-k factors without reloading the base."""
    pm, path = made["lora_emb"]
    ad = load_adapter(path)
    base = tiny_model("llama")
    x = tokens()
    with torch.no_grad(), ev.AdapterHooks(base, ad) as hooks:
        for k in (1, 2):
            hooks.set_modules({n: truncate_module(m, k, ad.use_rslora) for n, m in ad.modules.items()})
            resize(path, tmp_path / f"k{k}", rank=k)
            ref = peft.PeftModel.from_pretrained(tiny_model("llama"), str(tmp_path / f"k{k}")).eval()
            torch.testing.assert_close(base(x).logits, ref(x).logits, rtol=1e-5, atol=1e-5)


def _batches(vocab=128, n=3):
    out = []
    for i in range(n):
        ids = tokens(vocab, batch=2, seq=9 + i, seed=i)
        labels = ids.clone()
        labels[0, :4] = -100  # a prompt
        mask = torch.ones_like(ids)
        mask[1, -2:] = 0  # right padding
        labels[1, -2:] = -100
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_eval_loss_equals_model_loss(arch, monkeypatch):
    model = tiny_model(arch)
    batches = _batches()
    monkeypatch.setattr(ev, "LOSS_CHUNK", 5)  # several chunks per batch
    loss, acc, n = ev.eval_loss(model, batches)
    tot, corr, cnt = 0.0, 0, 0
    with torch.no_grad():
        for b in batches:
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
            y = b["labels"][:, 1:]
            keep = y != -100
            tot += float(torch.nn.functional.cross_entropy(logits[keep], y[keep], reduction="sum"))
            corr += int((logits[keep].argmax(-1) == y[keep]).sum())
            cnt += int(keep.sum())
    assert n == cnt
    assert loss == pytest.approx(tot / cnt, rel=1e-5)
    assert acc == pytest.approx(corr / cnt)
    with pytest.raises(LoradialError, match="no label tokens"):
        ev.eval_loss(model, [{**batches[0], "labels": torch.full_like(batches[0]["labels"], -100)}])


@pytest.fixture(scope="module")
def sweep_setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    model_dir = save_tiny_model(tmp / "model")
    base = tiny_llama()
    torch.manual_seed(3)
    pm = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                                   init_lora_weights=False)).eval()
    pm.save_pretrained(str(tmp / "adapter"))
    data = write_jsonl(tmp / "eval.jsonl", pc_records(6))
    return tmp, model_dir, pm, data


def test_alpha_sweep_end_to_end(sweep_setup, cli):
    tmp, model_dir, pm, data = sweep_setup
    res = ev.alpha_sweep(tmp / "adapter", model_dir, data, scales=[0, 0.5, 1], batch_size=4, device="cpu")
    assert res.scales == [0, 0.5, 1] and res.n_examples == 6 and res.n_tokens > 0
    assert res.best_scale in res.scales and res.best_loss == min(res.losses)
    # c = 1 is PEFT's model, c = 0 the base: compare against PEFT's own loss on the same batches
    from loradial import data as d
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    exs = d.tokenize_records(d.load_records(data), tok, 512)
    batch = d.collate(exs, tok.pad_token_id)
    with torch.no_grad():
        ref1 = pm(**batch).loss
        with pm.disable_adapter():
            ref0 = pm(**batch).loss
    assert res.losses[2] == pytest.approx(float(ref1), rel=1e-5)
    assert res.losses[0] == pytest.approx(float(ref0), rel=1e-5)
    code, out, err = cli("alpha-sweep", tmp / "adapter", "--model", model_dir, "--data", data, "--scales", "0,1", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["schema_version"] == 1 and doc["losses"][1] == pytest.approx(res.losses[2], rel=1e-6)
    code, out, err = cli("alpha-sweep", tmp / "adapter", "--model", model_dir, "--data", data, "--scales", "0,x")
    assert code == 2 and "invalid scale" in err


def test_alpha_sweep_errors(sweep_setup, tmp_path):
    tmp, model_dir, pm, data = sweep_setup
    with pytest.raises(LoradialError, match="no model"):
        ev.alpha_sweep(tmp / "adapter", tmp_path, data, scales=[1])
    with pytest.raises(LoradialError):
        ev.alpha_sweep(tmp / "adapter", model_dir, tmp_path / "missing.jsonl", scales=[1])
    with pytest.raises(LoradialError, match="invalid --scales"):
        ev.alpha_sweep(tmp / "adapter", model_dir, data, scales=[float("nan")])
