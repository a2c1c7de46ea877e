"""Wall time of an 8-config LoRA sweep: ``loradial.sweep`` vs 8 HF Trainer + PEFT jobs run one after another.

What users do today is one job per config: load the model from disk, ``get_peft_model``, train with
``transformers.Trainer``, evaluate, save the adapter. ``loradial sweep`` trains the 8 configs at
once on one frozen base (one pack), evaluates and saves them all. Both are timed end to end (model
load, tokenization, training, eval, saving), side by side in one process on one GPU, and both must
pick the same best config (lowest eval loss). A third run adds ``--halving`` (rungs at 25 % and 50 %).

Setup (not timed): a model saved to disk, randomly initialised from a bundled config (default
llama-3.2-1b; or ``--model DIR``), a word-level tokenizer and synthetic text from a seeded Markov
chain over 2,000 words (learnable structure, no download). The grid: r in {8, 32} x alpha/r in
{1, 2} x lr in {5e-5, 2e-4}, all-linear LoRA, cosine schedule, 3 % warmup, clipping 1.0.

    python benchmarks/sweep/bench_sweep.py --out $OUT/sweep.md          # H100: about 4-5 minutes
    python benchmarks/sweep/bench_sweep.py --smoke                      # CPU plumbing check, tiny model

Needs torch, transformers, peft and loradial (``pip install --no-deps -e .``); no network, no datasets.
The baseline jobs run in this process (no per-job CUDA start-up is charged to them).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

RANKS, RATIOS, LRS = (8, 32), (1, 2), (5e-5, 2e-4)
#: a Llama-family config: its saved directory loads our word-level tokenizer through AutoTokenizer as is
#: (transformers 5 swaps in the model family's own tokenizer class for some types, e.g. Qwen2)
DEFAULT_MODEL = "llama-3.2-1b"


# --- setup -------------------------------------------------------------------------------------------
def make_tokenizer(n_words: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(n_words)])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")


def markov_texts(n: int, n_words: int, length: tuple[int, int], seed: int) -> list[str]:
    """Text from a fixed random Markov chain: each word has 4 likely successors (learnable, not trivial)."""
    chain = random.Random(1234)
    succ = [[chain.randrange(n_words) for _ in range(4)] for _ in range(n_words)]
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        w = rng.randrange(n_words)
        words = []
        for _ in range(rng.randint(*length)):
            words.append(f"w{w}")
            w = rng.choice(succ[w]) if rng.random() < 0.9 else rng.randrange(n_words)
        out.append(" ".join(words))
    return out


def build_model(root: Path, model: str | None, smoke: bool, device: str, n_words: int) -> Path:
    """A model directory: ``--model DIR`` as is, else a random init of a bundled config (+ our tokenizer)."""
    from transformers import AutoModelForCausalLM

    from loradial.models.resolve import load_config_dict, to_pretrained_config

    tok = make_tokenizer(n_words)
    if model and Path(model).is_dir():
        return Path(model)
    if smoke:
        cfg = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=256, tie_word_embeddings=False)
    else:
        cfg, _ = load_config_dict(model or DEFAULT_MODEL, allow_hub=False)
        cfg = dict(cfg)
    cfg.update(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    dtype = torch.float32 if smoke else torch.bfloat16
    with torch.device(device):
        m = AutoModelForCausalLM.from_config(to_pretrained_config(cfg), dtype=dtype)
    path = root / "model"
    m.save_pretrained(path)
    tok.save_pretrained(path)
    del m
    return path


def write_data(root: Path, n_train: int, n_eval: int, n_words: int, length: tuple[int, int]) -> tuple[Path, Path]:
    paths = []
    for name, n, seed in (("train", n_train, 1), ("eval", n_eval, 2)):
        p = root / f"{name}.jsonl"
        p.write_text("".join(json.dumps({"text": t}) + "\n" for t in markov_texts(n, n_words, length, seed)))
        paths.append(p)
    return paths[0], paths[1]


# --- the baseline: one HF Trainer + PEFT job per config ------------------------------------------------
class TextDataset(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def hf_job(cfg: dict, model_dir: Path, train: Path, eval_: Path, out: Path, a: argparse.Namespace, device: str) -> float:
    """Load, wrap with PEFT, train with transformers.Trainer, evaluate, save; returns the eval loss."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    tok = AutoTokenizer.from_pretrained(str(model_dir))

    def tokenize(path: Path) -> list[dict]:
        texts = [json.loads(ln)["text"] for ln in path.read_text().splitlines()]
        enc = tok(texts, truncation=True, max_length=a.max_len - 1, add_special_tokens=False)["input_ids"]
        return [{"input_ids": ids + [tok.eos_token_id]} for ids in enc]

    def collate(rows: list[dict]) -> dict:
        T = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), T), tok.pad_token_id)
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r["input_ids"])] = torch.tensor(r["input_ids"])
            mask[i, :len(r["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}

    cuda = device.startswith("cuda")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16 if cuda else torch.float32).to(device)
    model = get_peft_model(model, LoraConfig(r=cfg["r"], lora_alpha=cfg["lora_alpha"], target_modules="all-linear",
                                             lora_dropout=0.0, task_type="CAUSAL_LM"))
    args = TrainingArguments(
        output_dir=str(out / "trainer"), max_steps=a.steps, per_device_train_batch_size=a.batch_size,
        per_device_eval_batch_size=a.batch_size, learning_rate=cfg["learning_rate"], lr_scheduler_type="cosine",
        warmup_steps=0.03, weight_decay=0.0, max_grad_norm=1.0, bf16=cuda, use_cpu=not cuda, logging_strategy="no",
        save_strategy="no", eval_strategy="no", report_to=[], seed=0, dataloader_num_workers=0,
        remove_unused_columns=False, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=TextDataset(tokenize(train)),
                      eval_dataset=TextDataset(tokenize(eval_)), data_collator=collate)
    trainer.train()
    loss = float(trainer.evaluate()["eval_loss"])
    model.save_pretrained(str(out / "adapter"))
    del trainer, model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return loss


# --- runs --------------------------------------------------------------------------------------------------
def grid() -> list[dict]:
    from loradial.sweeps.grid import build_grid

    return [dict(name=c.name, r=c.r, lora_alpha=c.lora_alpha, learning_rate=c.learning_rate)
            for c in build_grid(list(RANKS), f"ratio:{','.join(map(str, RATIOS))}", ["lora"], ["all-linear"], list(LRS))]


def run_sweep(model_dir, train, eval_, out, a, device, halving: bool):
    import loradial

    t0 = time.perf_counter()
    res = loradial.sweep(str(model_dir), str(train), out=out, ranks=list(RANKS),
                         alphas=f"ratio:{','.join(map(str, RATIOS))}", lrs=list(LRS), targets=["all-linear"],
                         steps=a.steps, batch_size=a.batch_size, max_len=a.max_len, eval_data=str(eval_),
                         halving=halving, devices=[device], progress=not a.quiet)
    return time.perf_counter() - t0, res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model directory, or a bundled config name (default llama-3.2-1b)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--max-len", type=int, default=None)
    p.add_argument("--smoke", action="store_true", help="tiny model on the CPU (plumbing check)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", default=None, help="markdown file for the table (default $OUT/bench_sweep.md)")
    a = p.parse_args()
    device = "cuda:0" if torch.cuda.is_available() and not a.smoke else "cpu"
    a.steps = a.steps or (6 if a.smoke else 120)
    a.batch_size = a.batch_size or (2 if a.smoke else 8)
    a.max_len = a.max_len or (48 if a.smoke else 256)
    n_words, length = (200, (8, 30)) if a.smoke else (2000, (150, 260))
    n_train, n_eval = (64, 16) if a.smoke else (4000, 128)
    out_md = Path(a.out or os.path.join(os.environ.get("OUT", "."), "bench_sweep.md"))
    root = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    try:
        model_dir = build_model(root, a.model, a.smoke, device, n_words)
        train, eval_ = write_data(root, n_train, n_eval, n_words, length)
        # warm-up (not timed): CUDA context, cuBLAS, the model file in the page cache
        from transformers import AutoModelForCausalLM

        AutoModelForCausalLM.from_pretrained(str(model_dir)).to(device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            gc.collect()
            torch.cuda.empty_cache()

        t_sweep, res = run_sweep(model_dir, train, eval_, root / "sweep", a, device, halving=False)
        t_halv, res_h = run_sweep(model_dir, train, eval_, root / "sweep_halving", a, device, halving=True)
        hf = {}
        t0 = time.perf_counter()
        for cfg in grid():
            hf[cfg["name"]] = hf_job(cfg, model_dir, train, eval_, root / "hf" / cfg["name"], a, device)
            if not a.quiet:
                print(f"HF Trainer + PEFT {cfg['name']}: eval loss {hf[cfg['name']]:.4f}", file=sys.stderr)
        t_hf = time.perf_counter() - t0
    finally:
        shutil.rmtree(root, ignore_errors=True)

    hf_best = min(hf, key=hf.get)
    ours = {c["name"]: c["best_eval_loss"] for c in res.configs}
    steps_h = sum(c["steps"] for c in res_h.configs)
    lines = [
        "| run | wall time (s) | speed-up vs HF | adapter-steps | best config | its eval loss | same best as HF |",
        "|---|---:|---:|---:|---|---:|---|",
        f"| HF Trainer + PEFT, 8 jobs one after another | {t_hf:.1f} | 1.00x | {8 * a.steps} | {hf_best} | {hf[hf_best]:.4f} | - |",
        f"| loradial sweep, 8 configs in {res.n_packs} pack(s) | {t_sweep:.1f} | {t_hf / t_sweep:.2f}x | {8 * a.steps} | "
        f"{res.best} | {ours[res.best]:.4f} | {'yes' if res.best == hf_best else 'NO'} |",
        f"| loradial sweep --halving (rungs {res_h.settings['halving_boundaries'][:-1]}) | {t_halv:.1f} | "
        f"{t_hf / t_halv:.2f}x | {steps_h} | {res_h.best} | "
        f"{next(c['best_eval_loss'] for c in res_h.configs if c['name'] == res_h.best):.4f} | "
        f"{'yes' if res_h.best == hf_best else 'NO'} |",
        "",
        "| config | eval loss, HF Trainer | eval loss, loradial sweep | stopped by halving at step |",
        "|---|---:|---:|---:|",
    ]
    stops = {c["name"]: c["stopped_at"] for c in res_h.configs}
    for name in sorted(hf, key=hf.get):
        lines.append(f"| {name} | {hf[name]:.4f} | {ours[name]:.4f} | {stops[name] if stops[name] is not None else '-'} |")
    dev = torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu"
    head = (f"# loradial sweep vs HF Trainer + PEFT ({'smoke, ' if a.smoke else ''}{dev})\n\n"
            f"- command: `{' '.join([Path(sys.executable).name, *sys.argv])}`\n"
            f"- device: {dev}; torch {torch.__version__}; python {platform.python_version()}\n"
            f"- model: {a.model or ('tiny llama' if a.smoke else DEFAULT_MODEL)} (random init, saved to disk), "
            f"{a.steps} steps x batch {a.batch_size} x max {a.max_len} tokens, {n_train} train / {n_eval} eval records\n\n")
    text = head + "\n".join(lines) + "\n"
    print(text)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(text)


if __name__ == "__main__":
    main()
