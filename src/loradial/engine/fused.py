"""One autograd node per adapted module: all its buckets' LoRA/DoRA updates, in place on the base output.

Per bucket (slices [a, b) of the K·m rows, G = b − a adapters; x' = dropout(x); As = s·Aᵀ (G, d_in, r);
Bd = Bᵀ (G, r, d_out); everything in the compute dtype)::

    h = x' As
    LoRA:  y ← y + h Bd
    DoRA:  y ← y + (g − 1) ⊙ base + g ⊙ (h Bd),   g = m / ‖W + sBA‖_row (no gradient through the norm),
           base = y − bias without dropout (PEFT's choice), x' Wᵀ with it

and the backward pass, with gy = ∂L/∂y on the bucket's rows and ĝ = gy (LoRA) or g ⊙ gy (DoRA)::

    ∂h = ĝ Bdᵀ,  ∂Bd = hᵀ ĝ,  ∂As = x'ᵀ ∂h,  ∂x' = ∂h Asᵀ  (+ ((g − 1) ⊙ gy) W for DoRA with dropout)
    ∂m = Σ_rows gy ⊙ (base + h Bd) / ‖W + sBA‖_row,   ∂x = ∂x' ⊙ mask / keep,   ∂A = s·∂As,  ∂B = ∂Bd
    ∂y_in = gy, or g ⊙ gy on DoRA rows without dropout (base depends on y)

With flat buffers (``flat.FlatAdamW`` sets ``bucket.flat_grads``) ∂A, ∂B and ∂m are accumulated
straight into the buckets' preset ``.grad`` views of the flat grad buffer (fp32, ∂A scaled in the
same kernel) and the node returns no gradient for them: no fp32 copy, no autograd accumulation.

Written by hand so that the base output is updated in place (no concatenation of bucket outputs, no
copies of the output gradient) and each module adds one node to the autograd graph instead of a
dozen per bucket. ``MultiLoraLayer.forward_reference`` is the same math through autograd; the tests
compare the two.
"""

from __future__ import annotations

import torch


def dropout(x: torch.Tensor, bucket) -> tuple[torch.Tensor, torch.Tensor]:
    """(x ⊙ mask / keep, mask) with each slice's own keep probability; the scale is applied exactly."""
    p = bucket.dropout
    if p is not None:  # one probability for the whole bucket
        mask = torch.rand(x.shape, device=x.device) >= p
        return x * mask * (1.0 / (1.0 - p)), mask
    mask = torch.rand(x.shape, device=x.device) < bucket.keep
    return (x.float() * (mask / bucket.keep)).to(x.dtype), mask


def _undrop(g: torch.Tensor, mask: torch.Tensor, bucket) -> torch.Tensor:
    if bucket.dropout is not None:
        return g * mask * (1.0 / (1.0 - bucket.dropout))
    return (g.float() * (mask / bucket.keep)).to(g.dtype)


class MultiLoraFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, layer, training: bool, *params):
        K, dt = layer.n_slices, y.dtype
        x3 = x.reshape(K, -1, x.shape[-1])
        y3 = y.view(K, -1, y.shape[-1])
        saved: list = [x]
        layout = []  # per bucket: index of its first saved tensor
        for b in layer.buckets:
            xg = x3[b.start:b.stop]
            if xg.dtype != dt:
                xg = xg.to(dt)
            mask = None
            if training and b.any_dropout:
                xg, mask = dropout(xg, b)
            As = (b.A.detach() * b.scale).to(dt)  # (G, d_in, r)
            Bd = b.B.detach().to(dt)  # (G, r, d_out)
            h = torch.bmm(xg, As)  # (G, m·T, r)
            yg = y3[b.start:b.stop]
            g = norm = base = None
            if b.dora:
                W = layer.base_weight(dt)
                norm = torch.linalg.norm(W.t() + torch.bmm(As, Bd), dim=1)  # (G, d_out)
                g = b.magnitude.detach() / norm  # fp32 (G, d_out)
                if mask is not None:
                    base = xg @ W.t()
                else:
                    bias = getattr(layer.base, "bias", None)
                    base = yg.clone() if bias is None else yg - bias
                gu = g.unsqueeze(1)
                yg.add_((gu - 1) * base + gu * torch.bmm(h, Bd))
            else:
                yg.baddbmm_(h, Bd)
            layout.append(len(saved))
            saved += [xg if mask is not None else None, mask, h, As, Bd, g, norm, base]
        ctx.mark_dirty(y)
        ctx.save_for_backward(*saved)
        ctx.layer, ctx.layout, ctx.x_dtype, ctx.x_shape = layer, layout, x.dtype, x.shape
        return y

    @staticmethod
    def backward(ctx, gy):
        saved = ctx.saved_tensors
        layer, x = ctx.layer, saved[0]
        K = layer.n_slices
        x3 = x.reshape(K, -1, x.shape[-1])
        g3 = gy.view(K, -1, gy.shape[-1])
        need_x = ctx.needs_input_grad[0]
        whole = len(layer.buckets) == 1 and layer.buckets[0].stop - layer.buckets[0].start == K
        grad_x3 = None
        if need_x and not whole:
            covered = sum(b.stop - b.start for b in layer.buckets) == K
            grad_x3 = (torch.empty if covered else torch.zeros)(x3.shape, dtype=ctx.x_dtype, device=x.device)
        scale_y = any(b.dora and saved[i + 1] is None for b, i in zip(layer.buckets, ctx.layout))
        grad_y = gy.clone() if scale_y else gy
        gy3 = grad_y.view(K, -1, gy.shape[-1])
        grads: list = []
        for b, i in zip(layer.buckets, ctx.layout):
            xd, mask, h, As, Bd, g, norm, base = saved[i:i + 8]
            dt = h.dtype
            if xd is None:
                xd = x3[b.start:b.stop].to(dt)
            gyb = g3[b.start:b.stop]
            grad_m = None
            if b.dora:
                gu = g.unsqueeze(1)
                lora = torch.bmm(h, Bd)
                grad_m = (gyb.float() * (base.float() + lora.float())).sum(dim=1) / norm
                gl = (gyb * gu).to(dt)
                if mask is None:
                    gy3[b.start:b.stop] = gl
            else:
                gl = gyb
            grad_h = torch.bmm(gl, Bd.transpose(1, 2))
            grad_B = torch.bmm(h.transpose(1, 2), gl)
            grad_A = torch.bmm(xd.transpose(1, 2), grad_h)
            if need_x:
                plain = mask is None and not b.dora and not whole and grad_x3.dtype == dt
                if plain:  # straight into its rows of ∂x
                    torch.bmm(grad_h, As.transpose(1, 2), out=grad_x3[b.start:b.stop])
                else:
                    gx = torch.bmm(grad_h, As.transpose(1, 2))
                    if b.dora and mask is not None:
                        gx = gx + ((gu - 1) * gyb).to(dt) @ layer.base_weight(dt)
                    if mask is not None:
                        gx = _undrop(gx, mask, b)
                    if whole:
                        grad_x3 = gx.to(ctx.x_dtype)
                    else:
                        grad_x3[b.start:b.stop] = gx
            if getattr(b, "flat_grads", False) and b.A.grad is not None:  # straight into the flat grad buffer
                b.A.grad.addcmul_(grad_A, b.scale)
                b.B.grad.add_(grad_B)
                if b.dora:
                    b.magnitude.grad.add_(grad_m)
                grads += [None] * (3 if b.dora else 2)
            else:
                grads += [grad_A.float() * b.scale, grad_B.float()] + ([grad_m] if b.dora else [])
        grad_x = grad_x3.reshape(ctx.x_shape) if need_x else None
        return (grad_x, grad_y, None, None, *grads)
