"""Flat buffers and a fused AdamW: every bucket tensor is a view into one fp32 buffer, one launch per adapter.

Same update as ``optim.AdapterOptimizer`` (per-adapter lr, weight decay, clipping, step count and
freezing; ``torch.optim.AdamW`` semantics; see that module's docstring), with a layout that makes
each adapter's tensors contiguous. Bucket tensors covering the same slices [start, stop) form a
*span*; a span of G adapters is a (G, S) block of the flat buffer, row g holding every tensor of
adapter start + g one after another, and each bucket tensor is a strided view of its columns::

    A (G, d_in, r) = span[:, c : c + d_in·r].view(G, d_in, r)       (batch stride S, no copy)

so adapter k owns one contiguous row per span it belongs to (one in all with equal ranks). The
gradients live in a second buffer of the same layout, attached as ``p.grad`` once: autograd and
``fused.MultiLoraFunction`` accumulate into them in place, and ``zero_grad`` is a single fill.
A step is one ``torch._foreach_norm`` over the rows, one ``index_add_`` for the per-adapter norms,
and one ``torch._fused_adamw_`` call per adapter over its rows (one kernel launch for the usual
single row) instead of one call over its hundreds of per-module views. Elementwise math is the
same kernel as the per-adapter path; only the order of the squared-norm sum differs (≤ 1 ulp of
the clip factor).

``lrs`` may be a (K,) fp32 device tensor instead of floats (CUDA graphs: the kernel then reads
each adapter's learning rate from the device).
"""

from __future__ import annotations

import torch
import torch.nn as nn


class FlatAdamW:
    def __init__(self, buckets: list, weight_decay: list[float], max_grad_norm: list[float | None],
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, K: int | None = None):
        """``buckets``: every Bucket of every layer (slices ``start..stop`` index the K adapters)."""
        self.K = len(weight_decay) if K is None else K
        spans: dict[tuple[int, int], list[tuple[nn.Module, str, torch.Tensor]]] = {}
        for b in buckets:
            for field in ("A", "B", "magnitude"):
                p = getattr(b, field, None)
                if p is not None:
                    spans.setdefault((b.start, b.stop), []).append((b, field, p))
        device = buckets[0].A.device if buckets else torch.device("cpu")
        layout, total = [], 0
        for (start, stop), items in spans.items():
            S = sum(p[0].numel() for _, _, p in items)
            layout.append((start, stop, S, total, items))
            total += (stop - start) * S
        self.numel = total
        self.flat = torch.zeros(total, dtype=torch.float32, device=device)
        self.grad = torch.zeros(total, dtype=torch.float32, device=device)
        self.exp_avg = torch.zeros(total, dtype=torch.float32, device=device)
        self.exp_avg_sq = torch.zeros(total, dtype=torch.float32, device=device)
        self.params: list[nn.Parameter] = []
        self._views: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        rows: list[list[int]] = [[] for _ in range(self.K)]
        self.rows = {n: [] for n in ("P", "G", "M", "V")}
        owner = []
        for start, stop, S, off, items in layout:
            G = stop - start
            blocks = {n: t[off:off + G * S].view(G, S) for n, t in
                      (("P", self.flat), ("G", self.grad), ("M", self.exp_avg), ("V", self.exp_avg_sq))}
            c = 0
            for b, field, p in items:
                n = p[0].numel()

                def cut(t: torch.Tensor) -> torch.Tensor:
                    return t[:, c:c + n].view(p.shape)

                pv = cut(blocks["P"])
                pv.copy_(p.detach())
                param = nn.Parameter(pv)
                setattr(b, field, param)
                param.grad = cut(blocks["G"])
                self._views[id(param)] = (cut(blocks["M"]), cut(blocks["V"]), param.grad)
                self.params.append(param)
                b.flat_grads = True
                c += n
            for g in range(G):
                rows[start + g].append(len(owner))
                owner.append(start + g)
                for name in self.rows:
                    self.rows[name].append(blocks[name][g])
        self.adapter_rows = rows
        self.owner = torch.tensor(owner, dtype=torch.long, device=device)
        self.steps = torch.zeros(self.K, dtype=torch.float32, device=device)
        self.frozen = torch.zeros(self.K, dtype=torch.float32, device=device)
        self.weight_decay = list(weight_decay)
        self.max_norm = torch.tensor([float("inf") if m is None else float(m) for m in max_grad_norm],
                                     dtype=torch.float32, device=device)
        self.betas, self.eps = betas, eps
        self._steps_k = [self.steps[k:k + 1].view(()) for k in range(self.K)]  # views, reused every step
        self._per = [{n: [self.rows[n][i] for i in rows[k]] for n in self.rows} for k in range(self.K)]

    def state(self, p: torch.nn.Parameter) -> tuple[torch.Tensor, torch.Tensor]:
        """(exp_avg, exp_avg_sq) of a bucket tensor: views of the flat moments, shaped like ``p``."""
        m, v, _ = self._views[id(p)]
        return m, v

    def zero_grad(self) -> None:
        """One fill; re-attaches a grad view that someone set to None (e.g. ``model.zero_grad()``)."""
        self.grad.zero_()
        for p in self.params:
            if p.grad is None:
                p.grad = self._views[id(p)][2]

    @torch.no_grad()
    def step(self, lrs, losses: torch.Tensor) -> torch.Tensor:
        """One AdamW step for every adapter; returns the per-adapter gradient norms (K,) before clipping."""
        dev = self.steps.device
        G = self.rows["G"]
        norms = torch.stack(torch._foreach_norm(G)) if G else torch.zeros(0, device=dev)
        total = torch.zeros(self.K, dtype=torch.float32, device=dev)
        total.index_add_(0, self.owner, norms.float().square()).sqrt_()
        bad = ~(torch.isfinite(total) & torch.isfinite(losses.float()))
        self.frozen.copy_(torch.maximum(self.frozen, bad.float()))
        inv_clip = (self.max_norm / (total + 1e-6)).clamp_(max=1.0).reciprocal()
        self.steps.add_(1.0)
        b1, b2 = self.betas
        tensor_lr = isinstance(lrs, torch.Tensor)
        for k in range(self.K):
            per = self._per[k]
            if not per["P"]:
                continue
            lr = lrs[k:k + 1].view(()) if tensor_lr else lrs[k]
            torch._fused_adamw_(per["P"], per["G"], per["M"], per["V"], [], [self._steps_k[k]] * len(per["P"]),
                                lr=lr, beta1=b1, beta2=b2, weight_decay=self.weight_decay[k], eps=self.eps,
                                amsgrad=False, maximize=False, grad_scale=inv_clip[k:k + 1],
                                found_inf=self.frozen[k:k + 1])
        return total
