"""Multi-adapter LoRA layers: one frozen base layer, K adapters, each applied to its own batch slice.

The batch holds K slices of m sequences (slice k = rows k·m … (k+1)·m − 1, the same m sequences
for every k). For a targeted linear layer W (d_out × d_in) and adapter k on slice x_k
(Hu et al. 2021, arXiv:2106.09685; DoRA: Liu et al. 2024, arXiv:2402.09353, as PEFT 0.21
``tuners/lora/dora.py`` computes it)::

    LoRA:  y_k = W x_k + s_k · B_k A_k d_k(x_k)
    DoRA:  y_k = W x_k + (g_k − 1) ⊙ W x'_k + g_k ⊙ s_k B_k A_k x'_k,
           g_k = m_k / ‖W + s_k B_k A_k‖_row  (the norm detached),  x'_k = d_k(x_k)

with s_k = alpha/r (LoRA) or alpha/√r (rsLoRA) and d_k the adapter's dropout. (Without dropout PEFT
uses the base output for W x'_k; with it, a second product W d_k(x_k), and so do we.)

``W x`` is computed once for all K·m rows by the untouched base layer. The adapters of one module
are grouped into *buckets* of contiguous slices; a bucket stores its adapters' factors zero-padded
to its largest rank, A as (G, d_in, r) and B as (G, r, d_out), so a bucket costs two ``torch.bmm``
whatever G is. Padded rows of A and columns of B receive exactly zero gradient and stay zero
under AdamW (zero moments give a zero step; decay of zero is zero), so padding changes no result.
``plan_buckets`` trades padding FLOPs against kernel launches with an exact dynamic program.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclasses.dataclass(frozen=True)
class SliceLora:
    """One adapter on one module: its rank, scaling s, dropout probability and DoRA flag."""

    r: int
    scale: float
    dropout: float = 0.0
    dora: bool = False


def plan_buckets(slices: list[SliceLora | None], overhead: float) -> list[tuple[int, int, int]]:
    """Buckets (start, stop, padded rank) covering the targeted slices (None = not targeted).

    A bucket of G slices padded to rank r costs G·r (its adapter FLOPs, in rank units) plus
    ``overhead`` (its launches, in the same units); the partition of each run of contiguous
    targeted slices is the exact minimum over contiguous groups (O(n²) dynamic program). LoRA and
    DoRA slices never share a bucket. ``overhead=0`` gives one bucket per run of equal ranks.
    """
    out: list[tuple[int, int, int]] = []
    i, n = 0, len(slices)
    while i < n:
        if slices[i] is None:
            i += 1
            continue
        j = i
        while j < n and slices[j] is not None and slices[j].dora == slices[i].dora:
            j += 1
        ranks = [s.r for s in slices[i:j]]
        best, cut = [0.0] + [math.inf] * len(ranks), [0] * (len(ranks) + 1)
        for b in range(1, len(ranks) + 1):
            rmax = 0
            for a in range(b - 1, -1, -1):
                rmax = max(rmax, ranks[a])
                cost = best[a] + (b - a) * rmax + overhead
                if cost <= best[b]:
                    best[b], cut[b] = cost, a
        segs, b = [], len(ranks)
        while b > 0:
            a = cut[b]
            segs.append((i + a, i + b, max(ranks[a:b])))
            b = a
        out += reversed(segs)
        i = j
    return out


def choose_overhead(modules: list[tuple[list[SliceLora | None], int]], budget: float,
                    candidates: tuple[float, ...] = (4096.0, 1024.0, 256.0, 64.0, 16.0, 0.0)) -> float:
    """The largest bucket overhead whose zero padding adds at most ``budget`` parameters.

    ``modules`` = (slices, d_in + d_out) per module. Fewer buckets mean fewer kernel launches; on a
    GPU the adapter matmuls of ranks <= 128 are memory-bound, so padding costs little time but
    memory (parameters, gradients and two AdamW moments: 16 bytes per padded fp32 entry).
    """
    def units(overhead: float) -> int:
        return sum((b - a) * r * dsum for slices, dsum in modules for a, b, r in plan_buckets(slices, overhead))

    exact = units(0.0)
    for c in candidates:
        if units(c) - exact <= budget:
            return c
    return 0.0


class Bucket(nn.Module):
    """Factors of the adapters on slices [start, stop) of one module, zero-padded to rank ``r``.

    Stored transposed relative to PEFT, so every product is a plain ``bmm``: A as (G, d_in, r) and
    B as (G, r, d_out) (an embedding's d_in is num_embeddings: its G tables concatenate into one lookup).
    """

    def __init__(self, start: int, stop: int, r: int, d_in: int, d_out: int, slices: list[SliceLora],
                 embedding: bool = False):
        super().__init__()
        self.start, self.stop, self.r, self.slices, self.embedding = start, stop, r, list(slices), embedding
        G = stop - start
        self.A = nn.Parameter(torch.zeros(G, d_in, r))
        self.B = nn.Parameter(torch.zeros(G, r, d_out))
        self.dora = slices[0].dora
        self.magnitude = nn.Parameter(torch.zeros(G, d_out)) if self.dora else None
        self.register_buffer("scale", torch.tensor([s.scale for s in slices], dtype=torch.float32).view(G, 1, 1),
                             persistent=False)
        p = [s.dropout for s in slices]
        self.dropout = p[0] if len(set(p)) == 1 else None  # one p for the bucket, or per slice
        if self.dropout is None:
            self.register_buffer("keep", torch.tensor([1 - q for q in p], dtype=torch.float32).view(G, 1, 1),
                                 persistent=False)
        self.any_dropout = any(q > 0 for q in p)

    def scaled_A(self, dtype: torch.dtype) -> torch.Tensor:
        """s·Aᵀ (G, d_in, r) in fp32, then cast: the scale is applied before rounding (as PEFT's float scalar is)."""
        a = self.A * self.scale
        return a if a.dtype == dtype else a.to(dtype)

    def B_as(self, dtype: torch.dtype) -> torch.Tensor:
        return self.B if self.B.dtype == dtype else self.B.to(dtype)


class _MultiBase(nn.Module):
    """Shared plumbing: the buckets, and the segments (start, stop, bucket or None) that tile [0, K)."""

    def __init__(self, base: nn.Module, kind: str):
        super().__init__()
        self.base, self.kind = base, kind
        self.n_slices = 1
        self.buckets = nn.ModuleList()
        self._segments: list[tuple[int, int, Bucket | None]] = []

    def set_buckets(self, buckets: list[Bucket], n_slices: int) -> None:
        self.buckets, self.n_slices = nn.ModuleList(buckets), n_slices
        segs, pos = [], 0
        for b in buckets:
            if b.start > pos:
                segs.append((pos, b.start, None))
            segs.append((b.start, b.stop, b))
            pos = b.stop
        if pos < n_slices:
            segs.append((pos, n_slices, None))
        self._segments = segs if buckets else []

    def _pieces(self, t3: torch.Tensor) -> list[torch.Tensor]:
        """``t3`` (K, …) cut along the segments; one split (a single cat in backward), no per-slice copies."""
        if len(self._segments) == 1:
            return [t3]
        return list(t3.split([stop - start for start, stop, _ in self._segments]))

    def _join(self, outs: list[torch.Tensor], shape) -> torch.Tensor:
        return (outs[0] if len(outs) == 1 else torch.cat(outs)).view(shape)


class MultiLoraLayer(_MultiBase):
    """A frozen Linear / GPT-2 Conv1D with K adapters on K batch slices (see the module docstring).

    ``forward`` applies every bucket in one autograd node (``fused.MultiLoraFunction``), in place on
    the base output; ``forward_reference`` is the same math through autograd.
    """

    def base_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """W as (d_out, d_in), dequantized for bitsandbytes layers (PEFT's ``dequantize_module_weight``)."""
        w = self.base.weight
        if w.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            from peft.utils.integrations import dequantize_module_weight

            w = dequantize_module_weight(self.base)
        w = w.detach()
        return (w.t() if self.kind == "conv1d" else w).to(dtype)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        y = self.base(x, *args, **kwargs)
        if not self._segments:
            return y
        if len(self._segments) == 1 and not getattr(self.buckets[0], "flat_grads", False):
            # one bucket over all slices: autograd is as lean, with less Python (flat grads: the node writes them)
            return self._autograd(x, y)
        from loradial.engine.fused import MultiLoraFunction

        if y._is_view():  # GPT-2 Conv1D returns addmm(...).view(...): an in-place update needs a non-view
            y = torch.ops.aten._unsafe_view(y, y.shape)
        params = [p for b in self.buckets for p in ((b.A, b.B, b.magnitude) if b.dora else (b.A, b.B))]
        return MultiLoraFunction.apply(x, y, self, self.training, *params)

    def forward_reference(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """The same computation through plain autograd whatever the buckets; for tests."""
        y = self.base(x, *args, **kwargs)
        return self._autograd(x, y) if self._segments else y

    def _autograd(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Out of place through autograd: one piece per segment, ``baddbmm(W x_g, h, Bᵀ)`` per bucket, one cat."""
        K, dt = self.n_slices, y.dtype
        xs = self._pieces(x.reshape(K, -1, x.shape[-1]))  # (G, m·T, d_in) each
        ys = self._pieces(y.view(K, -1, y.shape[-1]))  # (G, m·T, d_out) each
        outs = []
        for (_, _, b), xg, yg in zip(self._segments, xs, ys):
            if b is None:
                outs.append(yg)
                continue
            if xg.dtype != dt:
                xg = xg.to(dt)
            if self.training and b.any_dropout:
                from loradial.engine.fused import dropout

                xg = dropout(xg, b)[0]
            As, Bd = b.scaled_A(dt), b.B_as(dt)  # (G, d_in, r), (G, r, d_out)
            if not b.dora:
                outs.append(torch.baddbmm(yg, torch.bmm(xg, As), Bd))  # W x + (x sAᵀ) Bᵀ
                continue
            W = self.base_weight(dt)
            with torch.no_grad():
                norm = torch.linalg.norm(W.t() + torch.bmm(As, Bd), dim=1)  # ‖W + sBA‖_row: (G, d_out), detached
            g = (b.magnitude / norm).unsqueeze(1)  # (G, 1, d_out)
            if self.training and b.any_dropout:
                base_res = xg @ W.t()
            else:
                bias = getattr(self.base, "bias", None)
                base_res = yg if bias is None else yg - bias
            lora = torch.bmm(torch.bmm(xg, As), Bd)
            outs.append((yg + ((g - 1) * base_res + g * lora)).to(dt))
        return self._join(outs, y.shape)


class MultiLoraEmbedding(_MultiBase):
    """A frozen nn.Embedding with K adapters: y_k = E[ids_k] + s_k · (A_kᵀ[ids_k]) B_kᵀ (PEFT's embedding LoRA)."""

    def __init__(self, base: nn.Embedding):
        super().__init__(base, "embedding")

    def forward(self, ids: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        y = self.base(ids, *args, **kwargs)
        if not self._segments:
            return y
        K, n, dt = self.n_slices, self.base.num_embeddings, y.dtype
        embed_scale = getattr(self.base, "embed_scale", None)  # Gemma-style scaled embeddings
        outs = []
        for (_, _, b), ig, yg in zip(self._segments, self._pieces(ids.reshape(K, -1)), self._pieces(y.view(K, -1, y.shape[-1]))):
            if b is None:
                outs.append(yg)
                continue
            G = b.stop - b.start
            table = (b.A * b.scale).reshape(G * n, b.r)
            offsets = torch.arange(G, device=ids.device).view(G, 1) * n
            h = F.embedding(ig + offsets, table).to(dt)  # (G, m·T, r)
            if embed_scale is not None:
                h = h * embed_scale.to(dt)
            outs.append(torch.baddbmm(yg, h, b.B_as(dt)))
        return self._join(outs, y.shape)


def wrap_module(base: nn.Module, kind: str) -> nn.Module:
    return MultiLoraEmbedding(base) if kind == "embedding" else MultiLoraLayer(base, kind)


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


# --- PEFT-compatible initialisation ----------------------------------------------------------------
def peft_init(modules: list[tuple[str, str, int, int, int]], seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Initial (A, B) per module exactly as ``torch.manual_seed(seed); peft.get_peft_model(...)`` draws them.

    ``modules`` = (name, kind, d_in, d_out, r) in the model's ``named_modules`` order (PEFT's order).
    PEFT 0.21 (``tuners/lora/layer.py``) builds ``nn.Linear(d_in, r)`` and ``nn.Linear(r, d_out)``
    (each drawing its default Kaiming-uniform init), then redraws A with
    ``kaiming_uniform_(a=√5)`` and zeroes B; for an embedding it draws ``randn(r, n)``,
    ``randn(d, r)``, then zeroes A and redraws B with ``normal_``. All on the CPU generator, which
    is forked here so the caller's RNG is untouched.
    """
    out = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, kind, d_in, d_out, r in modules:
            if kind == "embedding":
                torch.randn(r, d_in), torch.randn(d_out, r)
                out[name] = (torch.zeros(r, d_in), torch.empty(d_out, r).normal_())
                continue
            nn.init.kaiming_uniform_(torch.empty(r, d_in), a=math.sqrt(5))
            nn.init.kaiming_uniform_(torch.empty(d_out, r), a=math.sqrt(5))
            A = torch.empty(r, d_in)
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))
            out[name] = (A, torch.zeros(d_out, r))
    return out
