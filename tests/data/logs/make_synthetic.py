"""Generate the labeled synthetic training curves under tests/data/logs/synthetic/ and manifest.json.

Deterministic (numpy default_rng with fixed seeds): run it again and the files are identical.
Each curve is a shape (exponential decay, U-shaped eval, divergence, spikes, ...) with
multiplicative noise, written in one of the formats ``loradial diagnose`` reads. The manifest maps
each file to {adapter: expected verdict}.

    python tests/data/logs/make_synthetic.py
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
OUT = HERE / "synthetic"


def decay(t, l0, linf, tau):
    return linf + (l0 - linf) * np.exp(-t / tau)


def noisy(x, sigma, rng):
    return x * (1 + sigma * rng.standard_normal(len(x)))


# --- writers -----------------------------------------------------------------------------------
def write_hf(path, steps, loss, eval_steps=(), eval_loss=(), grad=None, lr=2e-4):
    hist = []
    ev = dict(zip(eval_steps, eval_loss))
    for i, (s, l) in enumerate(zip(steps, loss)):
        rec = {"loss": float(l), "grad_norm": float(grad[i]) if grad is not None else 1.0,
               "learning_rate": lr, "epoch": round(float(s) / len(steps), 4), "step": int(s)}
        hist.append(rec)
        if int(s) in ev:
            hist.append({"eval_loss": float(ev[int(s)]), "eval_runtime": 1.0, "epoch": rec["epoch"], "step": int(s)})
    hist.append({"train_loss": float(np.nanmean(loss)), "train_runtime": 100.0, "epoch": 1.0, "step": int(steps[-1])})
    state = {"global_step": int(steps[-1]), "log_history": hist, "max_steps": int(steps[-1])}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=1))  # NaN/Infinity literals, as HF writes them


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_csv(path, rows, fields):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r[k]) for k in fields})


def write_torchtune_txt(path, steps, loss, lr=3e-4):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"Step {int(s)} | loss:{l} lr:{lr} tokens_per_second_per_gpu:1234.5 \n" for s, l in zip(steps, loss)]
    path.write_text("".join(lines))


def rows(steps, loss, eval_steps=(), eval_loss=(), **extra):
    out = [{"step": int(s), "loss": round(float(l), 6), **{k: v[i] for k, v in extra.items()}} for i, (s, l) in enumerate(zip(steps, loss))]
    out += [{"step": int(s), "eval_loss": round(float(e), 6)} for s, e in zip(eval_steps, eval_loss)]
    return out


# --- the curves ----------------------------------------------------------------------------------
def main() -> None:
    manifest: dict[str, dict[str, str]] = {}

    def add(rel, verdicts):
        manifest[rel] = verdicts if isinstance(verdicts, dict) else {"default": verdicts}

    t300 = np.arange(1, 301)

    # 1 healthy, HF trainer, eval tracks train with a small constant gap
    rng = np.random.default_rng(1)
    loss = noisy(decay(t300, 2.6, 1.1, 50), 0.03, rng)
    es = np.arange(30, 301, 30)
    ev = noisy(decay(es, 2.6, 1.18, 50), 0.005, rng)
    write_hf(OUT / "healthy_hf" / "trainer_state.json", t300, loss, es, ev, grad=noisy(np.full(300, 0.8), 0.1, rng))
    add("synthetic/healthy_hf/trainer_state.json", "healthy")

    # 2 healthy but very noisy (small batches), plain CSV, no eval
    rng = np.random.default_rng(2)
    t = np.arange(1, 401)
    write_csv(OUT / "healthy_noisy.csv", rows(t, noisy(decay(t, 3.0, 1.6, 60), 0.12, rng)), ["step", "loss"])
    add("synthetic/healthy_noisy.csv", "healthy")

    # 3 healthy with LR warmup (loss creeps up first), plain JSONL
    rng = np.random.default_rng(3)
    t = np.arange(1, 201)
    base = decay(np.maximum(t - 10, 0), 2.4, 1.3, 35) * (1 + 0.05 * np.clip(t, 0, 10) / 10 * (t <= 10))
    write_jsonl(OUT / "healthy_warmup.jsonl", rows(t, noisy(base, 0.03, rng)))
    add("synthetic/healthy_warmup.jsonl", "healthy")

    # 4 healthy with one isolated spike, torchtune DiskLogger text
    rng = np.random.default_rng(4)
    loss = noisy(decay(t300, 2.2, 0.9, 45), 0.03, rng)
    loss[149] *= 3.0
    write_torchtune_txt(OUT / "healthy_spike" / "log_1700000000.txt", t300, loss)
    add("synthetic/healthy_spike/log_1700000000.txt", "healthy")

    # 5 healthy, litgpt metrics.csv (train rows + validation rows, empty cells elsewhere)
    rng = np.random.default_rng(5)
    loss = noisy(decay(t300, 2.8, 1.4, 60), 0.04, rng)
    recs = []
    for i, (s, l) in enumerate(zip(t300, loss)):
        recs.append({"loss": round(float(l), 5), "iter": int(s), "step": int(s), "epoch": 0, "iter_time": 0.05,
                     "tokens": int(s) * 4 * 512, "total_tokens": int(s) * 4 * 512, "learning_rate": 3e-4})
        if s % 50 == 0:
            vl = float(decay(s, 2.8, 1.47, 60))
            recs.append({"val_loss": round(vl, 5), "val_ppl": round(math.exp(vl), 4), "step": int(s)})
    write_csv(OUT / "healthy_litgpt" / "metrics.csv", recs,
              ["epoch", "iter", "iter_time", "learning_rate", "loss", "step", "tokens", "total_tokens", "val_loss", "val_ppl"])
    add("synthetic/healthy_litgpt/metrics.csv", "healthy")

    # 6 underfitting: flat, plain JSONL with lr and grad norm
    rng = np.random.default_rng(6)
    loss = noisy(2.4 - 0.07 * (1 - np.exp(-t300 / 30)), 0.04, rng)
    write_jsonl(OUT / "underfit_flat.jsonl", rows(t300, loss, lr=[1e-5] * 300, grad_norm=[0.3] * 300))
    add("synthetic/underfit_flat.jsonl", "underfitting")

    # 7 underfitting: 5% drop then a plateau, torchtune jsonl
    rng = np.random.default_rng(7)
    loss = noisy(decay(t300, 2.0, 1.9, 20), 0.02, rng)
    write_jsonl(OUT / "underfit_torchtune" / "log_1700000001.jsonl",
                [{"step": int(s), "loss": float(l), "lr": 2e-5, "tokens_per_second_per_gpu": 900.0} for s, l in zip(t300, loss)])
    add("synthetic/underfit_torchtune/log_1700000001.jsonl", "underfitting")

    # 8 underfitting with eval: both barely move, HF trainer
    rng = np.random.default_rng(8)
    loss = noisy(decay(t300, 2.2, 2.1, 40), 0.02, rng)
    es = np.arange(25, 301, 25)
    write_hf(OUT / "underfit_hf" / "trainer_state.json", t300, loss, es, noisy(decay(es, 2.2, 2.12, 40), 0.003, rng), lr=1e-6)
    add("synthetic/underfit_hf/trainer_state.json", "underfitting")

    # 9 overfitting: U-shaped eval, HF trainer
    rng = np.random.default_rng(9)
    loss = noisy(decay(t300, 2.5, 0.5, 70), 0.03, rng)
    es = np.arange(20, 301, 20)
    ev = 1.2 + 1.3 * np.exp(-es / 40) + 0.0000045 * np.maximum(es - 100, 0) ** 2
    write_hf(OUT / "overfit_ushape" / "trainer_state.json", t300, loss, es, noisy(ev, 0.004, rng))
    add("synthetic/overfit_ushape/trainer_state.json", "overfitting")

    # 10 overfitting: eval plateaus while train keeps falling (widening gap), litgpt csv
    rng = np.random.default_rng(10)
    t = np.arange(1, 501)
    loss = noisy(decay(t, 2.6, 0.35, 150), 0.03, rng)
    recs = [{"loss": round(float(l), 5), "iter": int(s), "step": int(s), "learning_rate": 3e-4, "iter_time": 0.1}
            for s, l in zip(t, loss)]
    for s in range(50, 501, 50):
        vl = float(1.35 + 1.25 * math.exp(-s / 40) + 0.004 * rng.standard_normal())
        recs.append({"val_loss": round(vl, 5), "val_ppl": round(math.exp(vl), 3), "step": s})
    write_csv(OUT / "overfit_gap_litgpt" / "metrics.csv", recs,
              ["iter", "iter_time", "learning_rate", "loss", "step", "val_loss", "val_ppl"])
    add("synthetic/overfit_gap_litgpt/metrics.csv", "overfitting")

    # 11 overfitting, torchtune jsonl with val_loss
    rng = np.random.default_rng(11)
    loss = noisy(decay(t300, 2.3, 0.6, 60), 0.03, rng)
    recs = [{"step": int(s), "loss": float(l), "lr": 3e-4, "tokens_per_second_per_gpu": 1000.0} for s, l in zip(t300, loss)]
    for s in range(30, 301, 30):
        recs.append({"step": s, "val_loss": float(1.0 + 1.3 * math.exp(-s / 40) + 0.0025 * max(s - 120, 0))})
    write_jsonl(OUT / "overfit_torchtune" / "log_1700000002.jsonl", recs)
    add("synthetic/overfit_torchtune/log_1700000002.jsonl", "overfitting")

    # 12 memorizing: train loss to ~0.05, no eval, plain JSONL
    rng = np.random.default_rng(12)
    write_jsonl(OUT / "memorize.jsonl", rows(t300, noisy(decay(t300, 2.0, 0.04, 40), 0.05, rng)))
    add("synthetic/memorize.jsonl", "memorizing")

    # 13 memorizing, torchtune text
    rng = np.random.default_rng(13)
    write_torchtune_txt(OUT / "memorize_torchtune" / "log_1700000003.txt", t300, noisy(decay(t300, 1.8, 0.1, 50), 0.05, rng))
    add("synthetic/memorize_torchtune/log_1700000003.txt", "memorizing")

    # 14 unstable: NaN from step 120 on, HF trainer
    rng = np.random.default_rng(14)
    loss = noisy(decay(t300, 2.4, 1.1, 50), 0.03, rng)
    loss[119:] = float("nan")
    write_hf(OUT / "unstable_nan" / "trainer_state.json", t300, loss)
    add("synthetic/unstable_nan/trainer_state.json", "unstable")

    # 15 unstable: repeated spikes, torchtune text
    rng = np.random.default_rng(15)
    loss = noisy(decay(t300, 2.4, 1.2, 50), 0.03, rng)
    for s in range(40, 300, 37):
        loss[s] *= 2.5 + rng.random()
    write_torchtune_txt(OUT / "unstable_spikes" / "log_1700000004.txt", t300, loss)
    add("synthetic/unstable_spikes/log_1700000004.txt", "unstable")

    # 16 unstable: divergence after a good start, plain CSV with lr
    rng = np.random.default_rng(16)
    base = np.where(t300 <= 100, decay(t300, 2.5, 1.2, 25), decay(100, 2.5, 1.2, 25) * np.exp((t300 - 100) / 220))
    write_csv(OUT / "unstable_diverge.csv", rows(t300, noisy(base, 0.03, rng), lr=[1e-3] * 300), ["step", "loss", "lr"])
    add("synthetic/unstable_diverge.csv", "unstable")

    # 17 unstable: grad-norm explosions while the loss limps along, plain JSONL
    rng = np.random.default_rng(17)
    loss = noisy(decay(t300, 2.4, 1.3, 50), 0.03, rng)
    gn = noisy(np.full(300, 1.2), 0.1, rng)
    for s in (90, 140, 190, 240):
        gn[s] *= 40.0
        loss[s + 1] *= 1.3
    write_jsonl(OUT / "unstable_gradnorm.jsonl", rows(t300, loss, grad_norm=[float(g) for g in gn]))
    add("synthetic/unstable_gradnorm.jsonl", "unstable")

    # 18 unstable: loss overflows to inf, plain JSONL (json writes Infinity)
    rng = np.random.default_rng(18)
    t = np.arange(1, 121)
    loss = noisy(decay(t, 2.4, 1.3, 30), 0.03, rng)
    loss[80:] = float("inf")
    write_jsonl(OUT / "unstable_inf.jsonl", rows(t, loss))
    add("synthetic/unstable_inf.jsonl", "unstable")

    # 19 too few points
    write_jsonl(OUT / "too_few_points.jsonl", rows(np.arange(1, 6), [2.5, 2.3, 2.2, 2.1, 2.05]))
    add("synthetic/too_few_points.jsonl", "too_few_steps")

    # 20 too few steps: still falling steeply, eval falling too, HF trainer
    rng = np.random.default_rng(20)
    t = np.arange(1, 101)
    loss = noisy(3.0 - 0.015 * t, 0.02, rng)
    es = np.arange(10, 101, 10)
    write_hf(OUT / "too_few_falling" / "trainer_state.json", t, loss, es, 3.05 - 0.014 * es)
    add("synthetic/too_few_falling/trainer_state.json", "too_few_steps")

    # 21 too few steps: slow exponential far from its floor, plain CSV
    rng = np.random.default_rng(21)
    t = np.arange(1, 151)
    write_csv(OUT / "too_few_slow.csv", rows(t, noisy(decay(t, 2.8, 0.9, 400), 0.02, rng)), ["step", "loss"])
    add("synthetic/too_few_slow.csv", "too_few_steps")

    # 22 a sweep in loradial metrics.jsonl: three adapters, three verdicts
    rng = np.random.default_rng(22)
    recs = []
    shapes = {
        "r4-a4-lora-lr2e-4": (decay(t300, 2.3, 2.2, 30), lambda s: 2.25 - 0.05 * (1 - math.exp(-s / 30))),
        "r16-a16-lora-lr2e-4": (decay(t300, 2.3, 1.2, 50), lambda s: 1.27 + 1.03 * math.exp(-s / 50)),
        "r64-a64-lora-lr2e-4": (decay(t300, 2.3, 0.45, 60),
                                lambda s: 1.15 + 1.15 * math.exp(-s / 35) + 0.0035 * max(s - 110, 0)),
    }
    for name, (curve, evf) in shapes.items():
        loss = noisy(curve, 0.03, rng)
        for s, l in zip(t300, loss):
            recs.append({"step": int(s), "adapter": name, "loss": round(float(l), 5), "lr": 2e-4,
                         "grad_norm": round(float(0.9 + 0.1 * rng.random()), 4), "tokens": int(s) * 2048,
                         "elapsed": round(float(s) * 0.21, 2)})
            if s % 30 == 0:
                recs.append({"step": int(s), "adapter": name, "eval_loss": round(evf(int(s)), 5)})
    write_jsonl(OUT / "sweep" / "metrics.jsonl", recs)
    add("synthetic/sweep/metrics.jsonl", {"r4-a4-lora-lr2e-4": "underfitting", "r16-a16-lora-lr2e-4": "healthy",
                                          "r64-a64-lora-lr2e-4": "overfitting"})

    # 23 healthy, a JSON list of records
    rng = np.random.default_rng(23)
    t = np.arange(1, 251)
    recs = rows(t, noisy(decay(t, 1.9, 0.8, 40), 0.03, rng))
    (OUT / "healthy_list.json").write_text(json.dumps(recs))
    add("synthetic/healthy_list.json", "healthy")

    # 24 too few steps (issue 13 item 4): linear, -12% over the last quarter, but the per-step train loss is
    # so noisy (8%) that its tail slope is only 1.65 standard errors below zero; the old rule (2 SE) said
    # healthy. The seed is one where the noise hides the fall, picked for that. Plain JSONL, no eval.
    rng = np.random.default_rng(2535)
    t = np.arange(1, 201)
    write_jsonl(OUT / "too_few_linear_noisy.jsonl", rows(t, noisy(np.linspace(3.0, 2.0, 200), 0.08, rng), lr=[3e-4] * 200))
    add("synthetic/too_few_linear_noisy.jsonl", "too_few_steps")

    # 25 too few steps with eval: the same kind of noisy linear train loss (10%), whose tail slope reads as
    # nearly flat (-1.3%), while eval - averaged over many tokens - is at its minimum and fell 9% over the
    # last quarter. HF trainer_state.json; the old rules said healthy.
    rng = np.random.default_rng(2409)
    t = np.arange(1, 161)
    loss = np.linspace(3.2, 2.2, 160) * (1 + 0.10 * rng.standard_normal(160))
    es = np.arange(20, 161, 20)
    ev = np.interp(es, t, np.linspace(3.25, 2.3, 160)) * (1 + 0.003 * rng.standard_normal(len(es)))
    write_hf(OUT / "too_few_eval_falling" / "trainer_state.json", t, loss, es, ev, lr=3e-4)
    add("synthetic/too_few_eval_falling/trainer_state.json", "too_few_steps")

    path = HERE / "manifest.json"
    if path.exists():  # keep the entries of other generators (real/ logs)
        manifest = {**{k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("synthetic/")}, **manifest}
    path.write_text(json.dumps(dict(sorted(manifest.items())), indent=1) + "\n")
    print(f"wrote {len(manifest)} logs ({sum(len(v) for v in manifest.values())} curves)")


if __name__ == "__main__":
    main()
