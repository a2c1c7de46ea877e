"""--load-in-4bit for real, on a CPU: bitsandbytes >= 0.48 quantizes NF4 there (the test extras install it).

The engine on a 4-bit tiny base against PEFT on the same 4-bit base (both loaded by ``models.load``):
the base computes in bf16 (``bnb_4bit_compute_dtype``) and B starts at zero, so rounding shows more
than in fp32 (``test_engine.py``). Stated tolerances, from measurements on a 2-core x86 host with
2.4e-4 / 1.7e-5 / 1.6e-2 worst seen: per-step losses 1e-4, per-step gradient norms 5e-3, factors 5e-2.
"""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")
if tuple(int(p) for p in re.findall(r"\d+", bnb.__version__)[:2]) < (0, 48):
    pytest.skip("bitsandbytes < 0.48 cannot quantize on a CPU", allow_module_level=True)

import peft  # noqa: E402
import transformers  # noqa: E402

from loradial.data import collate, tokenize_records  # noqa: E402
from loradial.engine import AdapterConfig, Engine  # noqa: E402
from loradial.engine.batching import DataStream  # noqa: E402
from loradial.models.load import load_model  # noqa: E402
from loradial.spec import LoraSpec  # noqa: E402
from test_engine_fixtures import pc_records, save_tiny_model, tiny_tokenizer, write_jsonl  # noqa: E402

STEPS, BS = 4, 4
LOSS_TOL, NORM_TOL, FACTOR_TOL = 1e-4, 5e-3, 5e-2


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny Llama whose linear layers are multiples of bitsandbytes' CPU block size (64)."""
    return save_tiny_model(tmp_path_factory.mktemp("q4") / "model", hidden_size=64, intermediate_size=128)


@pytest.fixture(scope="module")
def examples():
    return tokenize_records(pc_records(16), tiny_tokenizer(), 64)


def load4(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = load_model(path, load_in_4bit=True, device="cpu", tokenizer=False)
    assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    return model


def peft_run(c: AdapterConfig, model, examples, eval_every: int | None = None):
    """PEFT on the 4-bit base, a plain loop (AdamW, HF schedule); optionally a no_grad eval between steps."""
    torch.manual_seed(c.seed)
    pm = peft.get_peft_model(model, c.spec.to_peft_config())
    assert isinstance(pm.base_model.model.model.layers[0].self_attn.q_proj, peft.tuners.lora.bnb.Linear4bit)
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
    sched = transformers.get_scheduler(c.schedule, opt, num_warmup_steps=c.warmup(STEPS), num_training_steps=STEPS)
    stream, losses, norms = DataStream(len(examples), BS, 0), [], []
    for step in range(STEPS):
        pm.train()
        loss = pm(**collate([examples[i] for i in stream.next()], 0)).loss
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, math.inf)))
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
        if eval_every and (step + 1) % eval_every == 0:
            pm.eval()
            with torch.no_grad():
                pm(**collate(examples[:2], 0))
    sd = peft.get_peft_model_state_dict(pm)
    return losses, norms, {k.removeprefix("base_model.model."): v for k, v in sd.items()}


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.mark.slow
@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_engine_equals_peft_on_a_4bit_base(base, examples, dora):
    c = AdapterConfig("x", LoraSpec(r=4, lora_alpha=8, target_modules="all-linear", use_dora=dora), lr=1e-2, seed=3,
                      max_grad_norm=None)
    e = Engine(load4(base), [c], examples, batch_size=BS, steps=STEPS, pad_token_id=0)
    e.run()
    got_l = [r["loss"] for r in e.history if "loss" in r]
    got_n = [r["grad_norm"] for r in e.history if "loss" in r]
    ref_l, ref_n, ref = peft_run(c, load4(base), examples)
    assert max(abs(a - b) / b for a, b in zip(got_l, ref_l)) < LOSS_TOL, (got_l, ref_l)
    assert max(abs(a - b) / b for a, b in zip(got_n, ref_n)) < NORM_TOL, (got_n, ref_n)
    for key, t in e.export_state("x", optimizer=False).items():
        mod, field = key.rsplit(".", 1)
        pkey = {"A": "lora_A.weight", "B": "lora_B.weight", "magnitude": "lora_magnitude_vector"}[field]
        assert rel(t, ref[f"{mod}.{pkey}"]) < FACTOR_TOL, key


def test_an_eval_between_steps_does_not_cut_the_gradient(base, examples):
    """bitsandbytes repacks a CPU Linear4bit for inference at its first no_grad forward and then computes it
    outside autograd; the loader turns that off, so training after an eval gets the same gradients."""
    c = AdapterConfig("x", LoraSpec(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]), lr=1e-2, seed=3,
                      max_grad_norm=None)
    _, plain, _ = peft_run(c, load4(base), examples)
    _, evaluated, _ = peft_run(c, load4(base), examples, eval_every=1)
    assert max(abs(a - b) / b for a, b in zip(evaluated, plain)) < 1e-6, (evaluated, plain)


@pytest.mark.slow
def test_train_and_sweep_load_in_4bit_on_a_cpu(base, tmp_path, cli):
    data = write_jsonl(tmp_path / "d.jsonl", pc_records(12))
    code, _, err = cli("train", "--model", base, "--data", data, "--rank", "2", "--alpha", "4", "--steps", "2",
                       "--batch-size", "2", "--max-len", "32", "--eval-fraction", "0.25", "--eval-every", "1",
                       "--load-in-4bit", "--out", tmp_path / "t")
    assert code == 0, err
    pm = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(base), tmp_path / "t" / "adapters" / "default")
    assert any(torch.count_nonzero(p) for n, p in pm.named_parameters() if "lora_B" in n)
    code, _, err = cli("sweep", "--model", base, "--data", data, "--ranks", "2", "--steps", "2", "--batch-size", "2",
                       "--max-len", "32", "--devices", "cpu", "--load-in-4bit", "--dtype", "bf16", "--out", tmp_path / "s", "--json")
    assert code == 0, err
    assert (tmp_path / "s" / "adapters").is_dir()
