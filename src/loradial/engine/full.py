"""Full fine-tuning: every parameter of the model trained, as the reference the adapters are measured against.

The same loop as the multi-adapter engine (``trainer.py``), with the model's own weights as the
trainable set: the data order of ``batching.DataStream`` (so a sweep's full config sees exactly the
batches its adapters see), the loss over the label tokens through ``loss.OutputHead`` (chunked; here
``trainable_token_losses``, which also gives the head its gradient), the mean over an optimizer step's
label tokens across its ``grad_accum`` micro-batches, Hugging Face's warmup + cosine/linear/constant
schedule (``config.lr_factor``), ``clip_grad_norm_`` and ``torch.optim.AdamW`` (Loshchilov & Hutter
2019) over every parameter. Weights, gradients and AdamW states are fp32 (load the model in fp32);
on CUDA the forward runs under bf16 autocast, as the engine's does. A non-finite loss or gradient norm
skips the update and stops the run (status ``diverged``).

Metrics lines have the engine's format (``{step, adapter, loss, lr, grad_norm, tokens, ...}`` and
``{step, adapter, eval_loss, ...}``), so the sweep's results read them unchanged. ``state_dict`` /
``load_state_dict`` (weights, AdamW moments and step counts, data position, RNG) make a run resumable
to the same final weights; ``save_model`` writes a normal Hugging Face model directory.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

from loradial.engine.batching import DataStream, make_batch
from loradial.engine.config import lr_factor
from loradial.engine.loss import OutputHead
from loradial.errors import LoradialError, runtime_failure
from loradial.settings import DEFAULT, TrainSettings


class FullEngine:
    """Full fine-tuning of one causal LM (see the module docstring)."""

    def __init__(self, model, name: str, train: list[dict], *, batch_size: int, steps: int, lr: float = DEFAULT.lr,
                 schedule: str = DEFAULT.schedule, warmup_ratio: float = DEFAULT.warmup_ratio,
                 warmup_steps: int | None = DEFAULT.warmup_steps, weight_decay: float = DEFAULT.weight_decay,
                 max_grad_norm: float | None = DEFAULT.max_grad_norm, eval: list[dict] | None = None,
                 eval_batch_size: int | None = None, grad_accum: int = 1, pad_token_id: int | None = None,
                 gradient_checkpointing: bool = False, seed: int = 0, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, loss_chunk_tokens: int | None = None, metrics_path=None):
        TrainSettings.checked(f"config {name}", lr=lr, weight_decay=weight_decay, schedule=schedule,
                              warmup_steps=warmup_steps, warmup_ratio=warmup_ratio, max_grad_norm=max_grad_norm)
        if not train:
            raise LoradialError("no training examples", "check --data: every record was empty or filtered out")
        if batch_size < 1 or grad_accum < 1 or steps < 1:
            raise LoradialError("batch size, gradient accumulation and steps must be >= 1", "use e.g. --batch-size 4 --steps 100")
        self.model, self.name, self.train_examples, self.eval_examples = model, name, train, eval or []
        self.batch_size, self.grad_accum, self.pad_token_id = batch_size, grad_accum, pad_token_id
        self.eval_batch_size = eval_batch_size or batch_size
        self.total_steps, self.lr, self.schedule = int(steps), float(lr), schedule
        self.warmup = warmup_steps if warmup_steps is not None else math.ceil(warmup_ratio * self.total_steps)
        self.max_grad_norm, self.seed = max_grad_norm, seed
        self.data = DataStream(len(train), batch_size, seed)
        params = list(model.parameters())
        if any(p.dtype != torch.float32 for p in params):
            raise runtime_failure("full fine-tuning keeps fp32 weights", "load the model with dtype float32")
        self.device = params[0].device
        self.amp = torch.bfloat16 if self.device.type == "cuda" else None
        self.multiple = 8 if self.device.type == "cuda" else None
        model.requires_grad_(True)
        self.backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
        if not isinstance(self.backbone, torch.nn.Module) or self.backbone is model:
            raise runtime_failure(f"{type(model).__name__} has no base model the engine can call", "use a causal LM")
        self.head = OutputHead(model, loss_chunk_tokens)
        if gradient_checkpointing:
            model.config.use_cache = False
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=self.lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self.step = 0
        self.status = "training"
        self.history: list[dict[str, Any]] = []
        self.metrics_path = metrics_path
        self._elapsed0, self._t0 = 0.0, time.perf_counter()
        self.tokens_seen = 0

    # --- the loop -------------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast("cuda", dtype=self.amp) if self.amp else contextlib.nullcontext()

    def lr_at(self, step: int) -> float:
        return self.lr * lr_factor(self.schedule, step, self.total_steps, self.warmup)

    def _loss_sum(self, batch, train: bool) -> torch.Tensor:
        """Sum of the label tokens' losses of one batch (fp32 scalar)."""
        with self._autocast():
            out = self.backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
            h = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
            flat = h.reshape(-1, h.shape[-1]).index_select(0, batch.index)
            if train:
                return self.head.trainable_token_losses(flat, batch.targets).sum()
            return self.head.token_losses(flat, batch.targets, self.amp).sum()

    def train_step(self) -> None:
        """One optimizer step: grad_accum micro-batches, mean over their label tokens, clip, AdamW."""
        if self.status != "training":
            return
        self.model.train()
        batches = [make_batch([self.train_examples[i] for i in self.data.next()], self.pad_token_id, self.device,
                              self.multiple) for _ in range(self.grad_accum)]
        n_labels = max(1, sum(b.n_labels for b in batches))
        total = torch.zeros((), device=self.device)
        for b in batches:
            loss = self._loss_sum(b, train=True)
            (loss / n_labels).backward()
            total += loss.detach()
        lr = self.lr_at(self.step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        clip = self.max_grad_norm if self.max_grad_norm is not None else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
        loss = float(total / n_labels)
        finite = math.isfinite(loss) and bool(torch.isfinite(norm))
        if finite:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        n_tokens = sum(b.n_tokens for b in batches)
        self.tokens_seen += n_tokens
        row = {"step": self.step, "adapter": self.name, "loss": loss if math.isfinite(loss) else None, "lr": lr,
               "grad_norm": float(norm) if math.isfinite(float(norm)) else None, "tokens": n_tokens,
               "label_tokens": n_labels, "elapsed": round(self.elapsed(), 4)}
        if not finite:
            row["diverged"] = True
            self.status = "diverged"
        self._log([row])

    def run(self, until: int | None = None, *, eval_every: int | None = None,
            on_step: Callable[["FullEngine"], None] | None = None) -> None:
        """Train up to step ``until`` (default: the end)."""
        until = self.total_steps if until is None else min(until, self.total_steps)
        while self.step < until and self.status == "training":
            self.train_step()
            if on_step is not None:
                on_step(self)
            if eval_every and self.step % eval_every == 0 and self.step < self.total_steps and self.eval_examples:
                self.evaluate()

    @torch.no_grad()
    def evaluate(self, examples: list[dict] | None = None, log: bool = True) -> float | None:
        """Mean eval loss over the label tokens of ``examples`` (default: the eval split)."""
        examples = self.eval_examples if examples is None else examples
        if not examples:
            return None
        self.model.eval()
        total, n = torch.zeros((), device=self.device), 0
        for s in range(0, len(examples), self.eval_batch_size):
            b = make_batch(examples[s:s + self.eval_batch_size], self.pad_token_id, self.device, self.multiple)
            total += self._loss_sum(b, train=False)
            n += b.n_labels
        self.model.train()
        value = float(total / max(n, 1))
        if log:
            self._log([{"step": self.step, "adapter": self.name, "eval_loss": value if math.isfinite(value) else None,
                        "eval_tokens": n, "elapsed": round(self.elapsed(), 4)}])
        return value

    def elapsed(self) -> float:
        return self._elapsed0 + time.perf_counter() - self._t0

    def _log(self, rows: list[dict]) -> None:
        self.history += rows
        if self.metrics_path is not None:
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write("".join(json.dumps(r) + "\n" for r in rows))

    # --- state ----------------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, metadata): weights, AdamW moments (per parameter index), RNG; step, data position, status."""
        tensors = {f"model/{i}": p.detach().cpu().contiguous() for i, p in enumerate(self.params)}
        steps = {}
        for i, p in enumerate(self.params):
            st = self.opt.state.get(p)
            if st:
                tensors[f"opt/{i}/exp_avg"] = st["exp_avg"].detach().cpu().contiguous()
                tensors[f"opt/{i}/exp_avg_sq"] = st["exp_avg_sq"].detach().cpu().contiguous()
                steps[str(i)] = float(st["step"])
        tensors["rng/cpu"] = torch.get_rng_state()
        if self.device.type == "cuda":
            tensors["rng/cuda"] = torch.cuda.get_rng_state(self.device)
        meta = {"name": self.name, "step": self.step, "total_steps": self.total_steps, "data": self.data.state(),
                "status": self.status, "opt_steps": steps, "elapsed": self.elapsed(), "tokens_seen": self.tokens_seen,
                "n_params": len(self.params)}
        return tensors, meta

    @torch.no_grad()
    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        if meta.get("n_params") != len(self.params) or meta.get("name") != self.name:
            raise LoradialError(f"checkpoint of {meta.get('name')!r} does not match this model", "the sweep directory is damaged")
        for i, p in enumerate(self.params):
            p.copy_(tensors[f"model/{i}"].to(p.device, p.dtype))
            if str(i) in meta["opt_steps"]:
                self.opt.state[p] = {"step": torch.tensor(meta["opt_steps"][str(i)]),
                                     "exp_avg": tensors[f"opt/{i}/exp_avg"].to(p.device).clone(),
                                     "exp_avg_sq": tensors[f"opt/{i}/exp_avg_sq"].to(p.device).clone()}
        self.step, self.status = int(meta["step"]), meta["status"]
        self.data.epoch, self.data.cursor = meta["data"]["epoch"], meta["data"]["cursor"]
        self._elapsed0, self._t0, self.tokens_seen = float(meta["elapsed"]), time.perf_counter(), int(meta["tokens_seen"])
        torch.set_rng_state(tensors["rng/cpu"])
        if "rng/cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng/cuda"], self.device)

    def save_state(self, path: str | Path) -> None:
        """``state_dict`` to ``path/{state.safetensors,state.json}`` in one rename (no pickle)."""
        from safetensors.torch import save_file

        from loradial.io import atomic_dir, atomic_write_json

        tensors, meta = self.state_dict()
        with atomic_dir(Path(path), overwrite=True) as tmp:
            save_file(tensors, str(tmp / "state.safetensors"))
            atomic_write_json(tmp / "state.json", meta)

    def load_state(self, path: str | Path) -> None:
        from safetensors.torch import load_file

        from loradial.io import read_json

        self.load_state_dict(load_file(str(Path(path) / "state.safetensors")), read_json(Path(path) / "state.json", "state"))

    def save_model(self, path: str | Path, tokenizer=None) -> Path:
        """The trained model as a Hugging Face model directory (``save_pretrained``, safetensors), in one rename."""
        from loradial.io import atomic_dir

        path = Path(path)
        with atomic_dir(path, overwrite=True) as tmp:
            self.model.save_pretrained(str(tmp), safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tmp))
        return path
