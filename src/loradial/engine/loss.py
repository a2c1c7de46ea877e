"""Per-token cross-entropy through the output head, chunked, without keeping logits for backward.

For hidden states h (N × H) at the positions that predict a label, head weight W (V × H):

    z = h Wᵀ (+ b),  ℓ_i = logsumexp(z_i) − z_i[y_i],  ∂ℓ_i/∂h_i = (softmax(z_i) − onehot(y_i)) W

Both are computed chunk by chunk in the forward pass (fp32 softmax over the low-precision
logits, as an autocast ``F.cross_entropy(logits.float())`` would); only ∂ℓ/∂h (N × H) is kept, and
the backward pass scales its rows by the incoming per-token gradients (a row scaling commutes
with everything above). So the fp32 logits of all K·m·T tokens never exist at once, and the head
costs two matmuls instead of the three that recomputation would need (the idea of Liger-Kernel's
fused linear cross-entropy). Gemma-style final-logit soft-capping (z ← c·tanh(z/c)) and constant
logit scales (Cohere, Granite) are applied with their derivatives.
"""

from __future__ import annotations

import torch


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, targets, chunk: int, scale: float, softcap: float | None, need_grad: bool):
        N = h.shape[0]
        losses = torch.empty(N, dtype=torch.float32, device=h.device)
        grad_h = torch.empty_like(h, dtype=weight.dtype) if need_grad else None
        with torch.no_grad():
            for s in range(0, N, chunk):
                hc, tc = h[s:s + chunk].to(weight.dtype), targets[s:s + chunk]
                z = hc @ weight.t()
                if bias is not None:
                    z = z + bias
                z = z.float()
                if scale != 1.0:
                    z.mul_(scale)
                if softcap:
                    t = torch.tanh(z / softcap)
                    z = t * softcap
                lse = torch.logsumexp(z, dim=-1)
                losses[s:s + chunk] = lse - z.gather(1, tc[:, None]).squeeze(1)
                if grad_h is not None:
                    p = z.sub_(lse[:, None]).exp_()  # softmax, in place
                    p[torch.arange(p.shape[0], device=p.device), tc] -= 1.0
                    if softcap:
                        p.mul_(1.0 - t * t)
                    if scale != 1.0:
                        p.mul_(scale)
                    grad_h[s:s + chunk] = p.to(weight.dtype) @ weight
        ctx.save_for_backward(grad_h)
        ctx.h_dtype = h.dtype
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        (grad_h,) = ctx.saved_tensors
        grad = grad_h * grad_losses[:, None].to(grad_h.dtype)
        return grad.to(ctx.h_dtype), None, None, None, None, None, None, None


class OutputHead:
    """The model's output head as a chunked per-token loss (see the module docstring)."""

    def __init__(self, model, chunk_tokens: int | None = None):
        head = model.get_output_embeddings()
        if head is None or not hasattr(head, "weight"):
            from loradial.errors import runtime_failure

            raise runtime_failure(f"{type(model).__name__} has no output head the engine can use")
        self.module = head
        cfg = model.config
        cfg = getattr(cfg, "get_text_config", lambda: cfg)()
        self.softcap = getattr(cfg, "final_logit_softcapping", None) or None
        scale = 1.0
        if getattr(cfg, "logit_scale", None) is not None:  # Cohere: logits * logit_scale
            scale *= float(cfg.logit_scale)
        if getattr(cfg, "logits_scaling", None) is not None:  # Granite: logits / logits_scaling
            scale /= float(cfg.logits_scaling)
        self.scale = scale
        vocab = head.weight.shape[0]
        # ~2^28 logits per chunk: ≈1.6 GB transient (bf16 + fp32 copies) whatever the vocabulary
        self.chunk = chunk_tokens or max(128, (1 << 28) // max(vocab, 1))

    def token_losses(self, h: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Per-token losses (N,) in fp32 for hidden states h (N, H); differentiable w.r.t. h."""
        w = self.module.weight
        b = getattr(self.module, "bias", None)
        if dtype is not None and w.dtype != dtype:
            w = w.to(dtype)
            b = None if b is None else b.to(dtype)
        return _LinearCrossEntropy.apply(h, w.detach(), None if b is None else b.detach(), targets, self.chunk,
                                         self.scale, self.softcap, torch.is_grad_enabled() and h.requires_grad)

    def trainable_token_losses(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-token losses (N,) in fp32 with gradients to h *and* the head's weight and bias (full
        fine-tuning): the same chunks, each recomputed in backward (``torch.utils.checkpoint``), so the
        fp32 logits of one chunk at most are alive and the head weight gets its exact gradient."""
        from torch.utils.checkpoint import checkpoint

        w, b = self.module.weight, getattr(self.module, "bias", None)

        def chunk_loss(hc, tc, w, b):
            z = torch.nn.functional.linear(hc, w, b).float()
            if self.scale != 1.0:
                z = z * self.scale
            if self.softcap:
                z = torch.tanh(z / self.softcap) * self.softcap
            return torch.nn.functional.cross_entropy(z, tc, reduction="none")

        return torch.cat([checkpoint(chunk_loss, h[s:s + self.chunk], targets[s:s + self.chunk], w, b, use_reentrant=False)
                          for s in range(0, h.shape[0], self.chunk)]) if h.shape[0] else h.new_zeros(0, dtype=torch.float32)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Logits as the model computes them (used to check the head once at start-up)."""
        z = (h.to(self.module.weight.dtype) @ self.module.weight.t())
        if getattr(self.module, "bias", None) is not None:
            z = z + self.module.bias
        z = z.float() * self.scale
        if self.softcap:
            z = torch.tanh(z / self.softcap) * self.softcap
        return z

    @torch.no_grad()
    def check(self, model, hidden, ids: list[int], autocast) -> None:
        """Our head must give the model's own logits on a short input (catches heads with other transforms)."""
        from loradial.errors import runtime_failure

        x = torch.tensor([ids], device=self.module.weight.device)
        was_training = model.training
        model.eval()
        with autocast():
            ref = model(input_ids=x, use_cache=False).logits.float()
            ours = self.logits(hidden(x))
        model.train(was_training)
        err = float((ours - ref).norm() / ref.norm().clamp_min(1e-12))
        if not err < (3e-2 if ref.device.type == "cuda" else 1e-4):
            raise runtime_failure(f"the engine's output head disagrees with {type(model).__name__} (rel. err {err:.2e})",
                                  "this architecture's head is not supported by the engine")
