"""The multi-adapter training engine: K LoRA/DoRA adapters trained at once on one frozen base model.

Every step takes m sequences, repeats them K times (shape (K·m, T): adapter k sees slice k, and
every adapter sees the same data in the same order), runs the base model once over the whole
batch with the multi-adapter layers of ``layers.py`` in place of the targeted modules, computes
each adapter's mean loss over its slice's label tokens through the chunked head of ``loss.py``,
and backpropagates their sum once (the adapters share no parameter, so each gets exactly the
gradient of its own loss). The optimizer then steps each adapter with its own learning rate,
schedule, weight decay and clipping — ``flat.FlatAdamW`` (default, ``optimizer="flat"``: all
factors and gradients in flat buffers, one fused launch per adapter) or ``optim.AdapterOptimizer``
(``optimizer="per-adapter"``: the earlier path over per-module views, kept for comparison); an adapter whose loss or gradient turns
non-finite is frozen on the device at once and removed from the batch at the next log flush.

Metrics are read back one step late (a pinned copy and an event), so the host never waits for the
step it has just queued. ``drop`` removes adapters mid-run (successive halving) and frees their
slots; ``state_dict``/``load_state_dict`` make a run resumable to the same final weights (the
checkpoint format is the same for both optimizers). ``cuda_graphs=True`` replays the steady-state
step as one CUDA graph (``graphs.py``).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from typing import Any, Callable

import torch

from loradial.errors import LoradialError, runtime_failure
from loradial.engine.config import AdapterConfig, peft_config_dict
from loradial.engine.layers import Bucket, SliceLora, choose_overhead, peft_init, plan_buckets, set_submodule, wrap_module
from loradial.engine.batching import Batch, DataStream, make_batch
from loradial.engine.loss import OutputHead
from loradial.engine.flat import FlatAdamW
from loradial.engine.optim import AdapterOptimizer

OPTIMIZERS = ("flat", "per-adapter")


class Engine:
    """K adapters on one frozen causal LM. See the module docstring; ``session.train_many`` drives it."""

    def __init__(self, model, adapters: list[AdapterConfig], train: list[dict], *, batch_size: int,
                 steps: int | None = None, epochs: float | None = None, eval: list[dict] | None = None,
                 grad_accum: int = 1, pad_token_id: int | None = None, gradient_checkpointing: bool = False,
                 seed: int = 0, eval_batch_size: int | None = None, bucket_overhead: float | str = "auto",
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, loss_chunk_tokens: int | None = None,
                 metrics_path=None, base_model_name: str | None = None, check_head: bool = True,
                 optimizer: str = "flat", cuda_graphs: bool = False):
        from loradial.models.resolve import list_modules

        if not adapters:
            raise LoradialError("no adapter to train")
        names = [a.name for a in adapters]
        if len(set(names)) != len(names):
            raise LoradialError(f"adapter names must be unique, got {names}")
        if not train:
            raise LoradialError("no training examples", "check --data: every record was empty or filtered out")
        if batch_size < 1 or grad_accum < 1:
            raise LoradialError("batch size and gradient accumulation must be >= 1", "use e.g. --batch-size 4 --grad-accum 1")
        if any(isinstance(m, (Bucket,)) or hasattr(m, "buckets") for m in model.modules()):
            raise LoradialError("this model already carries engine layers", "use a fresh model (or engine.unwrap())")
        if optimizer not in OPTIMIZERS:
            raise LoradialError(f"unknown optimizer {optimizer!r}", f"use one of {', '.join(OPTIMIZERS)}")
        self.optimizer, self.cuda_graphs = optimizer, bool(cuda_graphs)
        self.model, self.train_examples, self.eval_examples = model, train, eval or []
        self.batch_size, self.grad_accum, self.pad_token_id = batch_size, grad_accum, pad_token_id
        self.eval_batch_size = eval_batch_size or batch_size
        self.bucket_overhead, self.betas, self.eps = bucket_overhead, betas, eps
        self.base_model_name = base_model_name
        per_epoch = math.ceil(math.ceil(len(train) / batch_size) / grad_accum)
        if (steps is None) == (epochs is None):
            raise LoradialError("give exactly one of steps and epochs", "use --steps N or --epochs E")
        self.total_steps = int(steps) if steps is not None else max(1, math.ceil(epochs * per_epoch))
        if self.total_steps < 1:
            raise LoradialError(f"steps must be >= 1, got {steps}", "use e.g. --steps 100")
        self.data = DataStream(len(train), batch_size, seed)
        self.seed = seed

        params = list(model.parameters())
        self.device = params[0].device
        self.amp = torch.bfloat16 if self.device.type == "cuda" else None
        self.multiple = 8 if self.device.type == "cuda" else None
        if self.cuda_graphs:
            from loradial.engine.graphs import check_graphable

            quantized = any(p.dtype not in (torch.float32, torch.float16, torch.bfloat16) for p in params)
            check_graphable(self.device, gradient_checkpointing=gradient_checkpointing, load_in_4bit=quantized,
                            dropout=max(a.spec.lora_dropout for a in adapters), optimizer=optimizer)
        self._graph = None
        model.requires_grad_(False)
        self.backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
        if not isinstance(self.backbone, torch.nn.Module) or self.backbone is model:
            raise runtime_failure(f"{type(model).__name__} has no base model the engine can call", "use a causal LM")
        self.head = OutputHead(model, loss_chunk_tokens)
        if check_head:
            self.head.check(model, lambda x: self._hidden(x, None), train[0]["input_ids"][:16], self._autocast)
        if gradient_checkpointing:
            model.config.use_cache = False
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

        # --- which modules each adapter targets (PEFT's matching rules) ---
        head_mod = model.get_output_embeddings()
        infos = list_modules(model)
        linear_names = [m.name for m in infos if m.kind in ("linear", "conv1d") and not m.is_output_head]
        self.configs: dict[str, AdapterConfig] = {a.name: a for a in adapters}
        self.index = {a.name: i for i, a in enumerate(adapters)}
        self.slices: dict[str, dict[str, SliceLora]] = {}
        self.module_info = {}
        for a in adapters:
            hits = [m for m in infos if a.spec.matches(m.name, linear_names)]
            if not hits:
                raise LoradialError(f"adapter {a.name!r}: targets {a.spec.target_modules!r} match no module",
                                    "see `loradial plan` or use --targets all-linear")
            for m in hits:
                if m.is_output_head or model.get_submodule(m.name) is head_mod:
                    raise LoradialError(f"adapter {a.name!r} targets the output head {m.name}", "the engine does not adapt the head")
                if m.kind == "embedding" and a.spec.use_dora:
                    raise LoradialError(f"adapter {a.name!r}: DoRA on an embedding is not supported by the engine",
                                        "drop the embedding from --targets or train it without --dora")
            widest = max(max(m.d_in, m.d_out) for m in hits)
            if any(a.spec.rank_for(m.name) > widest for m in hits):
                raise LoradialError(f"adapter {a.name!r}: rank {max(a.spec.rank_for(m.name) for m in hits):,} exceeds every "
                                    f"dimension of the modules it targets (at most {widest:,})",
                                    f"choose a rank of at most {widest:,} (ΔW = B·A has rank ≤ min(d_in, d_out))")
            self.slices[a.name] = {m.name: SliceLora(a.spec.rank_for(m.name), a.spec.scaling_for(m.name),
                                                    a.spec.lora_dropout, a.spec.use_dora) for m in hits}
            self.module_info.update({m.name: m for m in hits})
        order = [m.name for m in infos if m.name in self.module_info]
        self.layers = {}
        for name in order:
            layer = wrap_module(model.get_submodule(name), self.module_info[name].kind)
            set_submodule(model, name, layer)
            self.layers[name] = layer
        self.module_order = order

        # --- state ---
        self.step = 0
        self.status = {a.name: "training" for a in adapters}
        self.finished: dict[str, dict[str, torch.Tensor]] = {}
        self.frozen_at: dict[str, int] = {}
        self.history: list[dict[str, Any]] = []
        self.metrics_path = metrics_path
        self._pending: list[tuple] = []
        self._elapsed0 = 0.0
        self._t0 = time.perf_counter()
        self.tokens_seen = 0
        states = {a.name: self._init_state(a) for a in adapters}
        self._build(states, {n: 0.0 for n in names}, {n: 0.0 for n in names})

    # --- set-up ---------------------------------------------------------------------------------
    def _autocast(self):
        # no autocast weight cache under CUDA graphs (a captured cast must be redone on every replay)
        return (torch.autocast("cuda", dtype=self.amp, cache_enabled=not self.cuda_graphs) if self.amp
                else contextlib.nullcontext())

    def _init_state(self, cfg: AdapterConfig) -> dict[str, torch.Tensor]:
        """Initial factors: given ones, or PEFT's draws for the adapter's seed; DoRA m = ‖W + sBA‖_row."""
        mods = [(n, self.module_info[n].kind, self.module_info[n].d_in, self.module_info[n].d_out, s.r)
                for n, s in self.slices[cfg.name].items()]
        drawn = peft_init(mods, cfg.seed) if cfg.init is None else {}
        state = {}
        for name, kind, d_in, d_out, r in mods:
            given = (cfg.init or {}).get(name)
            if cfg.init is not None and given is None:
                raise LoradialError(f"adapter {cfg.name!r}: no initial factors for {name}")
            A, B = (given[0], given[1]) if given is not None else drawn[name]
            if tuple(A.shape) != (r, d_in) or tuple(B.shape) != (d_out, r):
                raise LoradialError(f"adapter {cfg.name!r}: initial factors of {name} have shapes "
                                    f"{tuple(A.shape)}, {tuple(B.shape)}; expected ({r}, {d_in}), ({d_out}, {r})")
            state[f"{name}.A"], state[f"{name}.B"] = A.float().cpu(), B.float().cpu()
            if cfg.spec.use_dora:
                if given is not None and len(given) > 2 and given[2] is not None:
                    state[f"{name}.magnitude"] = given[2].float().cpu()
                else:
                    W = self.layers[name].base_weight(torch.float32).cpu()
                    s = self.slices[cfg.name][name].scale
                    state[f"{name}.magnitude"] = torch.linalg.norm(W + s * (state[f"{name}.B"] @ state[f"{name}.A"]), dim=1)
        return state

    # --- layout ---------------------------------------------------------------------------------
    @property
    def active(self) -> list[str]:
        """Adapters still in the batch, in slice order (DoRA last, then by descending rank)."""
        return self._order

    def _build(self, states: dict[str, dict[str, torch.Tensor]], steps: dict[str, float], frozen: dict[str, float]) -> None:
        names = [n for n in self.configs if self.status[n] == "training"]
        order = sorted(names, key=lambda n: (self.configs[n].spec.use_dora, -self.configs[n].spec.r, self.index[n]))
        self._order = order
        self._where: dict[str, dict[str, tuple[Bucket, int]]] = {n: {} for n in order}
        entries: list[list[tuple[torch.nn.Parameter, int]]] = [[] for _ in order]
        fills = []
        overhead = self._overhead(order)
        for mod, layer in self.layers.items():
            info = self.module_info[mod]
            slices = [self.slices[n].get(mod) for n in order]
            dev = layer.base.weight.device
            buckets = []
            for start, stop, r in plan_buckets(slices, overhead):
                b = Bucket(start, stop, r, info.d_in, info.d_out, slices[start:stop], info.kind == "embedding").to(dev)
                for g in range(stop - start):
                    name = order[start + g]
                    self._where[name][mod] = (b, g)
                    entries[start + g] += [(b.A, g), (b.B, g)] + ([(b.magnitude, g)] if b.dora else [])
                    fills.append((name, mod, b, g))
                buckets.append(b)
            layer.set_buckets(list(buckets), len(order))
        cfgs = [self.configs[n] for n in order]
        wd, clip = [c.weight_decay for c in cfgs], [c.max_grad_norm for c in cfgs]
        if self.optimizer == "flat":
            self.opt = FlatAdamW([b for layer in self.layers.values() for b in layer.buckets], wd, clip,
                                 self.betas, self.eps, K=len(order))
        else:
            self.opt = AdapterOptimizer(entries, wd, clip, self.betas, self.eps)
        self._graph = None  # new buckets: a captured step would point at the old ones
        with torch.no_grad():
            for name, mod, b, g in fills:
                st = states[name]
                for field, p in (("A", b.A), ("B", b.B), ("magnitude", b.magnitude)):
                    if p is None:
                        continue
                    m, v = self.opt.state(p)
                    for suffix, t in (("", p), (".exp_avg", m), (".exp_avg_sq", v)):
                        src = st.get(f"{mod}.{field}{suffix}")
                        if src is not None:
                            self._slot(t, g, field, b)[...] = src.to(t.device, t.dtype)
            for k, name in enumerate(order):
                self.opt.steps[k] = float(steps[name])
                self.opt.frozen[k] = float(frozen[name])

    def _overhead(self, order: list[str]) -> float:
        """Bucketing cost of a launch, in rank units; 'auto': fewest buckets whose padding fits a memory budget
        (5% of the GPU's memory; 16 MiB on a CPU, where padding costs FLOPs)."""
        if self.bucket_overhead != "auto":
            return float(self.bucket_overhead)
        if self.device.type == "cuda":
            budget = 0.05 * torch.cuda.get_device_properties(self.device).total_memory / 16
        else:
            budget = (16 << 20) / 16
        mods = [([self.slices[n].get(mod) for n in order], self.module_info[mod].d_in + self.module_info[mod].d_out)
                for mod in self.layers]
        return choose_overhead(mods, budget)

    @staticmethod
    def _slot(t: torch.Tensor, g: int, field: str, b: Bucket) -> torch.Tensor:
        """Slice g's real (unpadded) part of a bucket tensor, as a view in PEFT's orientation:
        A (r, d_in) from (G, d_in, r), B (d_out, r) from (G, r, d_out), magnitude (d_out,)."""
        r = b.slices[g].r
        if field == "magnitude":
            return t[g]
        return t[g, :, :r].t() if field == "A" else t[g, :r, :].t()

    def export_state(self, name: str, optimizer: bool = True) -> dict[str, torch.Tensor]:
        """Adapter ``name``'s factors (and AdamW moments) as CPU tensors keyed '<module>.<A|B|magnitude>[.exp_avg|.exp_avg_sq]'."""
        if name not in self._where:
            return dict(self.finished[name])
        out = {}
        for mod, (b, g) in self._where[name].items():
            for field, p in (("A", b.A), ("B", b.B), ("magnitude", b.magnitude)):
                if p is None:
                    continue
                out[f"{mod}.{field}"] = self._slot(p.detach(), g, field, b).float().cpu().clone()
                if optimizer:
                    m, v = self.opt.state(p)
                    out[f"{mod}.{field}.exp_avg"] = self._slot(m, g, field, b).cpu().clone()
                    out[f"{mod}.{field}.exp_avg_sq"] = self._slot(v, g, field, b).cpu().clone()
        return out

    def export_adapter(self, name: str):
        """Adapter ``name`` as a ``loradial.adapter.Adapter`` (PEFT format, CPU float32 tensors)."""
        from loradial.adapters.format import Adapter, LoraModule

        cfg, st = self.configs[name], self.export_state(name, optimizer=False)
        modules = {}
        for mod, sl in self.slices[name].items():
            modules[mod] = LoraModule(name=mod, kind=self.module_info[mod].kind, A=st[f"{mod}.A"], B=st[f"{mod}.B"],
                                      scale=sl.scale, r=sl.r, alpha=cfg.spec.alpha_for(mod),
                                      magnitude=st.get(f"{mod}.magnitude"))
        return Adapter(peft_config_dict(cfg.spec, list(modules), self.base_model_name), modules)

    # --- training -------------------------------------------------------------------------------
    def _hidden(self, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        out = self.backbone(input_ids=ids, attention_mask=mask, use_cache=False)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def _slice_losses(self, batch: Batch, K: int) -> torch.Tensor:
        """Sum of token losses of each slice, (K,) fp32, differentiable."""
        m, T = batch.input_ids.shape
        ids = batch.input_ids.repeat(K, 1)
        mask = None if batch.attention_mask is None else batch.attention_mask.repeat(K, 1)
        with self._autocast():
            h = self._hidden(ids, mask)  # (K·m, T, H)
            flat = h.reshape(K * m * T, h.shape[-1])
            idx = (torch.arange(K, device=flat.device) * (m * T)).view(K, 1) + batch.index.view(1, -1)
            tok = self.head.token_losses(flat.index_select(0, idx.view(-1)), batch.targets.repeat(K), self.amp)
        return tok.view(K, -1).sum(dim=1)

    def _examples(self, idx: list[int], pool: list[dict]) -> list[dict]:
        return [pool[i] for i in idx]

    def train_step(self) -> None:
        """One optimizer step of every active adapter (grad_accum micro-batches of batch_size sequences)."""
        K = len(self._order)
        if K == 0:
            return
        if not self.model.training:
            self.model.train()
        if self.cuda_graphs:  # the same step, static shapes, replayed as one CUDA graph
            from loradial.engine.graphs import graphed_train_step

            return graphed_train_step(self)
        batches = [make_batch(self._examples(self.data.next(), self.train_examples), self.pad_token_id, self.device,
                              self.multiple) for _ in range(self.grad_accum)]
        n_labels = sum(b.n_labels for b in batches)
        total = None
        for b in batches:
            losses = self._slice_losses(b, K)
            (losses.sum() / n_labels).backward()
            total = losses.detach() if total is None else total + losses.detach()
        loss = total / n_labels
        lrs = [self.configs[n].lr_at(self.step, self.total_steps) for n in self._order]
        norms = self.opt.step(lrs, loss)
        self.opt.zero_grad()
        self.step += 1
        n_tokens = sum(b.n_tokens for b in batches)
        self.tokens_seen += n_tokens * K
        self._queue(self.step, loss, norms, lrs, n_tokens, n_labels)

    def run(self, until: int | None = None, *, eval_every: int | None = None, save_every: int | None = None,
            on_step: Callable[["Engine"], None] | None = None, on_save: Callable[["Engine"], None] | None = None) -> None:
        """Train up to step ``until`` (default: the end), evaluating and checkpointing on the way."""
        until = self.total_steps if until is None else min(until, self.total_steps)
        while self.step < until and self._order:
            self.train_step()
            if on_step is not None:
                on_step(self)
            if eval_every and self.step % eval_every == 0 and self.step < self.total_steps and self.eval_examples:
                self.evaluate()
            if save_every and on_save is not None and self.step % save_every == 0:
                on_save(self)
        self.flush()

    # --- metrics (read back one step late) ------------------------------------------------------
    def _queue(self, step: int, loss, norms, lrs, n_tokens: int, n_labels: int) -> None:
        vals = torch.cat([loss.float(), norms.float(), self.opt.frozen])
        event = None
        if vals.device.type == "cuda":
            buf = torch.empty(vals.shape, dtype=vals.dtype, pin_memory=True)
            buf.copy_(vals, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            vals = buf
        self._pending.append((step, list(self._order), lrs, n_tokens, n_labels, vals, event))
        lag = 1 if event is not None else 0
        while len(self._pending) > lag:
            self._flush_one()
        self._drop_diverged()

    def _flush_one(self) -> None:
        step, order, lrs, n_tokens, n_labels, vals, event = self._pending.pop(0)
        if event is not None:
            event.synchronize()
        v = vals.tolist()
        K = len(order)
        rows = []
        for k, name in enumerate(order):
            if name in self.frozen_at and step > self.frozen_at[name]:
                continue
            row = {"step": step, "adapter": name, "loss": v[k], "lr": lrs[k], "grad_norm": v[K + k],
                   "tokens": n_tokens, "label_tokens": n_labels, "elapsed": round(self.elapsed(), 4)}
            if v[2 * K + k] > 0:
                row["diverged"] = True
                self.frozen_at[name] = step
            rows.append(row)
        self._log(rows)

    def flush(self) -> None:
        """Read back every queued step's metrics (one host synchronisation) and drop diverged adapters."""
        while self._pending:
            self._flush_one()
        self._drop_diverged()

    def _drop_diverged(self) -> None:
        gone = [n for n in self.frozen_at if self.status.get(n) == "training"]
        if gone:
            self.drop(gone, reason="diverged")

    def _log(self, rows: list[dict]) -> None:
        self.history += rows
        if self.metrics_path is not None and rows:
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write("".join(json.dumps(_finite(r)) + "\n" for r in rows))

    def elapsed(self) -> float:
        return self._elapsed0 + time.perf_counter() - self._t0

    # --- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, examples: list[dict] | None = None, log: bool = True) -> dict[str, float]:
        """Mean eval loss per active adapter over the label tokens of ``examples`` (default: the eval split)."""
        examples = self.eval_examples if examples is None else examples
        if not examples or not self._order:
            return {}
        self.model.eval()
        K = len(self._order)
        total, n = torch.zeros(K, device=self.device), 0
        for s in range(0, len(examples), self.eval_batch_size):
            b = make_batch(examples[s:s + self.eval_batch_size], self.pad_token_id, self.device, self.multiple)
            total += self._slice_losses(b, K)
            n += b.n_labels
        losses = (total / max(n, 1)).tolist()
        self.model.train()
        out = dict(zip(self._order, losses))
        if log:
            t = round(self.elapsed(), 4)
            self._log([{"step": self.step, "adapter": k, "eval_loss": v, "eval_tokens": n, "elapsed": t} for k, v in out.items()])
        return out

    # --- dropping adapters ----------------------------------------------------------------------
    def drop(self, names: list[str], reason: str = "dropped") -> None:
        """Remove adapters from the batch (their final weights are kept); the others continue unchanged."""
        names = [n for n in names if self.status.get(n) == "training"]
        if not names:
            return
        while self._pending:
            self._flush_one()
        keep = [n for n in self._order if n not in names]
        states = {n: self.export_state(n) for n in keep}
        steps = {n: float(self.opt.steps[k]) for k, n in enumerate(self._order)}
        frozen = {n: float(self.opt.frozen[k]) for k, n in enumerate(self._order)}
        for n in names:
            self.finished[n] = self.export_state(n, optimizer=False)
            self.status[n] = reason
        self._build(states, steps, frozen)

    # --- checkpoint state -----------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, metadata) that ``load_state_dict`` restores exactly; flushes pending metrics first."""
        self.flush()
        tensors: dict[str, torch.Tensor] = {}
        for k, n in enumerate(self._order):
            tensors.update({f"active/{n}/{key}": t for key, t in self.export_state(n).items()})
        for n, st in self.finished.items():
            tensors.update({f"finished/{n}/{key}": t for key, t in st.items()})
        tensors["rng/cpu"] = torch.get_rng_state()
        if self.device.type == "cuda":
            tensors["rng/cuda"] = torch.cuda.get_rng_state(self.device)
        meta = {
            "step": self.step, "total_steps": self.total_steps, "data": self.data.state(), "seed": self.seed,
            "adapters": [self.configs[n].to_dict() for n in self.configs], "status": dict(self.status),
            "frozen_at": dict(self.frozen_at), "elapsed": self.elapsed(), "tokens_seen": self.tokens_seen,
            "opt_steps": {n: float(self.opt.steps[k]) for k, n in enumerate(self._order)},
            "frozen": {n: float(self.opt.frozen[k]) for k, n in enumerate(self._order)},
        }
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        saved = [d["name"] for d in meta["adapters"]]
        if saved != list(self.configs):
            raise LoradialError(f"checkpoint adapters {saved} differ from this run's {list(self.configs)}")
        self.step, self.total_steps = int(meta["step"]), int(meta["total_steps"])
        self.data.epoch, self.data.cursor = meta["data"]["epoch"], meta["data"]["cursor"]
        self.status, self.frozen_at = dict(meta["status"]), {k: int(v) for k, v in meta["frozen_at"].items()}
        self._elapsed0, self._t0, self.tokens_seen = float(meta["elapsed"]), time.perf_counter(), int(meta["tokens_seen"])
        states: dict[str, dict[str, dict[str, torch.Tensor]]] = {"active": {}, "finished": {}}
        for key, t in tensors.items():
            kind, _, rest = key.partition("/")
            if kind in states:
                name, _, field = rest.partition("/")
                states[kind].setdefault(name, {})[field] = t
        self.finished = states["finished"]
        self._pending = []
        self._build(states["active"], meta["opt_steps"], meta["frozen"])
        torch.set_rng_state(tensors["rng/cpu"])
        if "rng/cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng/cuda"], self.device)

    def unwrap(self) -> None:
        """Put the original modules back (the model is as it was before the engine)."""
        for name, layer in self.layers.items():
            set_submodule(self.model, name, layer.base)
        self.layers = {}


def _finite(row: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
