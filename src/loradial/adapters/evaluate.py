"""Evaluate base + adapter without PEFT layers: our own factors applied by forward hooks, swappable.

``AdapterHooks`` puts a forward hook on every adapted module of a frozen base model that adds the
LoRA output computed from factors we hold (PEFT's forward, ``peft/tuners/lora/layer.py``):

    Linear / Conv1D:  y = base(x) + c·s · B (A x)  (+ c·s·b with lora_bias)
    Embedding:        y = base(ids) + c·s · (Aᵀ[ids]) Bᵀ
    DoRA (Liu et al. 2024, arXiv:2402.09353; PEFT dora.py), with V = W + c·s·B·A (linear orientation)
    and n = ‖V‖ per output row:   y = base(x) + (m/n − 1) ⊙ W x + (m/n) ⊙ c·s·B(Ax)

where c is a strength multiplier (``set_multiplier``; c multiplies s exactly like PEFT's
``rescale_adapter_scale``, so c = 0 is the base model for LoRA, while for DoRA the magnitude
renormalization m/‖W‖ remains; ``enabled = False`` gives the base model). ``set_modules`` swaps the factors (e.g. every
module truncated to rank k, ``spectrum.best_rank_k``) without reloading anything, so a scale sweep
(``alpha_sweep``) and a truncation curve share one load and one code path.

Tensors the adapter saves besides its factors (``format.saved_tensors``: ``modules_to_save`` copies,
trained biases, trained token rows) replace the base's for as long as the hooks are on (``apply_saved``),
at every multiplier and also with ``enabled = False`` — PEFT's ``rescale_adapter_scale`` leaves them
too, so c = 0 (and truncation rank 0) is "the adapter without its LoRA factors".

``eval_loss`` runs the backbone once per batch and applies the output head to the label positions in
chunks, so full fp32 logits for all tokens never exist at once.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

from loradial.adapters import features
from loradial.adapters.format import Adapter, LoraModule, load_adapter
from loradial.errors import LoradialError
from loradial.models.load import check_model_dir, load_model, load_tokenizer
from loradial.result import Result
from loradial.settings import EVAL

LOSS_CHUNK = 1024  # label tokens per output-head chunk


# --- the base model: loradial.models.load (one loader for every verb) ---------------------------
def load_base_model(path: str | Path, device: Any = None, trust_remote_code: bool = False):
    """The frozen base under an adapter being measured: a local directory or a Hub id, its stored dtype."""
    from loradial.models.hub import resolve_model

    return load_model(resolve_model(path), dtype="stored", device=device, trust_remote_code=trust_remote_code, local_only=True,
                      frozen=True, tokenizer=False)[0]


def locate(model, m: LoraModule):
    """The base module of adapter module ``m`` in ``model``, with its weight shape checked."""
    import torch.nn as nn
    from transformers.pytorch_utils import Conv1D

    try:
        mod = model.get_submodule(m.name)
    except AttributeError:
        raise LoradialError(f"the model has no module {m.name}", "is this the base model the adapter was trained on?") from None
    expected = {nn.Linear: ((m.d_out, m.d_in), "linear"), Conv1D: ((m.d_in, m.d_out), "conv1d"),
                nn.Embedding: ((m.d_in, m.d_out), "embedding")}
    for cls, (shape, kind) in expected.items():
        if isinstance(mod, cls):
            if (kind == "embedding") != (m.kind == "embedding") or tuple(mod.weight.shape) != shape:
                raise LoradialError(
                    f"module {m.name}: base weight {tuple(mod.weight.shape)} ({kind}) does not fit the adapter's "
                    f"{m.kind} factors A {tuple(m.A.shape)}, B {tuple(m.B.shape)}",
                    "is this the base model the adapter was trained on (vocabulary resized?)",
                )
            return mod, kind
    raise LoradialError(f"module {m.name} is a {type(mod).__name__}, which loradial cannot adapt", "only Linear, Conv1D, Embedding")


def linear_weight(mod, kind: str):
    """The base weight in linear orientation (d_out, d_in) (a view)."""
    return mod.weight if kind == "linear" else mod.weight.T


# --- saved tensors ---------------------------------------------------------------------------
def _module_name(model, module) -> str | None:
    return next((n for n, m in model.named_modules(remove_duplicate=False) if m is module), None)


def saved_weights(model, adapter: Adapter) -> dict[str, Any]:
    """Base parameter / buffer name -> the value the adapter gives it (``format.saved_tensors``), checked.

    Full copies (modules_to_save, trained biases, saved embeddings) replace the parameter; trained token
    rows replace those rows (PEFT ``TrainableTokensLayer``: ``weight.index_copy(0, indices, values)``).
    Tied input embedding and output head: PEFT ties a token adapter on the embedding to the head unless
    the head has rows of its own, so rows of the embedding alone change both (one shared tensor);
    anything else that touches one of them unties them, as PEFT's wrapper copies do.
    """
    import torch

    saved = adapter.saved
    if not saved:
        return {}
    params = dict(model.named_parameters(remove_duplicate=False))
    buffers = dict(model.named_buffers(remove_duplicate=False))
    hint = "is --model the base model the adapter was trained on?"

    def current(name: str):
        t = params.get(name, buffers.get(name))
        if t is None:
            raise LoradialError(f"the adapter saves a tensor for {name}, which the base model does not have", hint)
        return t

    new: dict[str, Any] = {}
    for name, t in saved.params.items():
        cur = current(name)
        if tuple(cur.shape) != tuple(t.shape):
            raise LoradialError(f"the adapter's {name} is {tuple(t.shape)} but the base model's is {tuple(cur.shape)}",
                                "resize the base model's embeddings to the adapter's vocabulary first" if t.dim() == 2 else hint)
        new[name] = t
    from_rows: set[str] = set()
    for rows in saved.rows:
        name = f"{rows.module}.weight"
        cur = current(name)
        if cur.dim() != 2 or cur.shape[1] != rows.values.shape[1] or max(rows.indices, default=0) >= cur.shape[0] \
                or min(rows.indices, default=0) < 0:
            raise LoradialError(f"the adapter's trained token rows of {rows.module} ({tuple(rows.values.shape)}, token ids "
                                f"up to {max(rows.indices)}) do not fit its weight {tuple(cur.shape)}", hint)
        W = new.get(name, cur).detach().to(cur.dtype).clone()
        idx = torch.tensor(rows.indices, dtype=torch.long, device=W.device)
        new[name] = W.index_copy(0, idx, rows.values.to(device=W.device, dtype=W.dtype))
        from_rows.add(name)
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if emb is not None and head is not None and getattr(emb, "weight", None) is getattr(head, "weight", 0):
        e_name, h_name = f"{_module_name(model, emb)}.weight", f"{_module_name(model, head)}.weight"
        if e_name in from_rows and e_name in new and h_name not in new and e_name not in saved.params:
            new[h_name] = new[e_name]  # PEFT ties the head's token adapter to the embedding's
    return new


def apply_saved(model, adapter: Adapter):
    """Put the adapter's saved tensors (``saved_weights``) into ``model``; returns a function that restores the base.

    Each changed parameter becomes a new ``nn.Parameter`` (frozen, the base's dtype and device); a tensor shared
    by two names stays shared. Returns ``(restore, names)``.
    """
    import torch.nn as nn

    new = saved_weights(model, adapter)
    undo: list[tuple[Any, str, bool, Any]] = []
    made: dict[int, Any] = {}
    for name, t in new.items():
        mod_name, _, attr = name.rpartition(".")
        mod = model.get_submodule(mod_name)
        is_param = attr in mod._parameters
        old = mod._parameters[attr] if is_param else mod._buffers[attr]
        if id(t) not in made:
            value = t.detach().to(device=old.device, dtype=old.dtype).clone()
            made[id(t)] = nn.Parameter(value, requires_grad=False) if is_param else value
        undo.append((mod, attr, is_param, old))
        if is_param:
            mod._parameters[attr] = made[id(t)]
        else:
            mod._buffers[attr] = made[id(t)]

    def restore() -> None:
        for mod, attr, is_param, old in reversed(undo):
            (mod._parameters if is_param else mod._buffers)[attr] = old
        undo.clear()

    return restore, sorted(new)


def saved_note(adapter: Adapter) -> list[str]:
    """The note the evaluating verbs add when the adapter saves more than LoRA factors."""
    saved = adapter.saved
    if not saved:
        return []
    return [f"the adapter also saves {saved.describe()}: they replace the base's at every scale and truncation rank "
            "(0 included), as in PEFT, where rescale_adapter_scale leaves them too"]


# --- hooks -----------------------------------------------------------------------------------
class AdapterHooks:
    """Apply a LoRA adapter's factors to a frozen model through forward hooks (see module docstring)."""

    def __init__(self, model, adapter: Adapter | dict[str, LoraModule]):
        self.model = model
        self.multiplier = 1.0
        self.enabled = True
        """False: hooks pass the base output through unchanged (the base model)."""
        self._handles: list[Any] = []
        self._state: dict[str, dict[str, Any]] = {}
        self._restore = None
        if isinstance(adapter, Adapter):  # saved copies first: DoRA's norms and the shape checks see them
            self._restore, self.saved_names = apply_saved(model, adapter)
        modules = adapter.modules if isinstance(adapter, Adapter) else adapter
        try:
            self.set_modules(modules)
        except BaseException:
            self.remove()
            raise
        for name, st in self._state.items():
            self._handles.append(st["module"].register_forward_hook(self._hook(name)))

    # state ----------------------------------------------------------------------------------
    def set_modules(self, modules: dict[str, LoraModule]) -> None:
        """(Re)place the factors; module set must stay the same after the first call."""
        if self._state and set(modules) != set(self._state):
            raise ValueError("set_modules must cover the same modules as before")
        for name, m in modules.items():
            mod, kind = locate(self.model, m)
            w = mod.weight
            st = {"module": mod, "kind": kind, "scale": float(m.scale),
                  "A": m.A.to(device=w.device, dtype=w.dtype), "B": m.B.to(device=w.device, dtype=w.dtype),
                  "bias": None if m.bias is None else m.bias.to(device=w.device, dtype=w.dtype),
                  "magnitude": None if m.magnitude is None else m.magnitude.to(device=w.device, dtype=w.dtype)}
            self._state[name] = st
        self._refresh_dora()

    def set_multiplier(self, c: float) -> None:
        """Multiply every module's scale s by ``c`` (0 = base model, 1 = the adapter as trained)."""
        self.multiplier = float(c)
        self._refresh_dora()

    def _refresh_dora(self) -> None:
        import torch

        for st in self._state.values():
            if st["magnitude"] is None:
                continue
            W = linear_weight(st["module"], st["kind"]).float()
            V = W + (self.multiplier * st["scale"]) * (st["B"].float() @ st["A"].float())
            st["dora_factor"] = (st["magnitude"].float() / torch.linalg.vector_norm(V, dim=1)).to(W.dtype)

    def remove(self) -> None:
        """Remove the hooks and give the base its own tensors back."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._restore is not None:
            self._restore()
            self._restore = None

    def __enter__(self) -> "AdapterHooks":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    # forward --------------------------------------------------------------------------------
    def _hook(self, name: str):
        import torch.nn.functional as F

        def hook(module, args, output):
            if not self.enabled:
                return output
            st = self._state[name]
            s = self.multiplier * st["scale"]
            x = args[0]
            if st["kind"] == "embedding":
                lora = F.embedding(x, st["A"].T) @ st["B"].T
                if hasattr(module, "embed_scale"):  # scaled embeddings (Gemma): PEFT scales the LoRA part too
                    lora = lora * module.embed_scale.to(lora.dtype)
                if st["magnitude"] is None:
                    return output + s * lora.to(output.dtype)
                f = st["dora_factor"].to(output.dtype)
                return output * f + f * (s * lora).to(output.dtype)
            xa = x.to(st["A"].dtype)
            lora = (xa @ st["A"].T) @ st["B"].T
            if st["bias"] is not None:
                lora = lora + st["bias"]
            if st["magnitude"] is None:
                return output + (s * lora).to(output.dtype)
            f = st["dora_factor"].to(output.dtype)
            bias = getattr(module, "bias", None)
            base = output if bias is None else output - bias
            return output + (f - 1) * base + f * (s * lora).to(output.dtype)

        return hook


# --- loss ------------------------------------------------------------------------------------
def _head_transform(model):
    """Post-head logit transforms some architectures apply inside forward (soft-capping, scaling)."""
    cfg = model.config
    cap = getattr(cfg, "final_logit_softcapping", None)
    scale = getattr(cfg, "logit_scale", None)

    def f(logits):
        if scale is not None:
            logits = logits * scale
        if cap:
            import torch

            logits = torch.tanh(logits / cap) * cap
        return logits

    return f


def eval_loss(model, batches: Iterable[dict[str, Any]]) -> tuple[float, float, int]:
    """(mean token loss, token accuracy, number of label tokens) of a causal LM on ``batches``
    (dicts with input_ids, attention_mask, labels; labels -100 are ignored; next-token shift).

    The loss is summed over label tokens and divided once at the end (the same as one big
    cross-entropy). The backbone's last hidden states go through the output head in chunks of
    ``LOSS_CHUNK`` label tokens, so fp32 logits exist for at most that many tokens at a time.
    """
    import torch
    import torch.nn.functional as F

    head = model.get_output_embeddings()
    backbone = model.base_model if model.base_model is not model else None
    if head is None or backbone is None:
        raise LoradialError("the model has no separate output head", "alpha-sweep needs a causal LM")
    post = _head_transform(model)
    device = head.weight.device
    total, correct, n = 0.0, 0, 0
    with torch.inference_mode():
        for batch in batches:
            ids = batch["input_ids"].to(device)
            mask = batch.get("attention_mask")
            mask = None if mask is None else mask.to(device)
            labels = batch["labels"].to(device)
            hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, C)
            h = hidden[:, :-1]
            y = labels[:, 1:]
            keep = y != -100
            h, y = h[keep], y[keep]  # (N, C), (N,)
            for i in range(0, y.shape[0], LOSS_CHUNK):
                logits = post(head(h[i:i + LOSS_CHUNK])).float()
                total += float(F.cross_entropy(logits, y[i:i + LOSS_CHUNK], reduction="sum"))
                correct += int((logits.argmax(-1) == y[i:i + LOSS_CHUNK]).sum())
            n += int(y.shape[0])
    if n == 0:
        raise LoradialError("the evaluation data has no label tokens", "check the data file and its prompt/response fields")
    return total / n, correct / n, n


# --- alpha-sweep -----------------------------------------------------------------------------
@dataclasses.dataclass
class AlphaSweepResult(Result):
    adapter: str
    model: str
    data: str
    n_examples: int
    n_tokens: int
    scales: list[float]
    losses: list[float]
    accuracies: list[float]
    best_scale: float
    best_loss: float
    loss_at_1: float | None
    notes: list[str]


def _batches(examples: Sequence[dict], pad_id: int, batch_size: int):
    from loradial import data

    for i in range(0, len(examples), batch_size):
        yield data.collate(list(examples[i:i + batch_size]), pad_id)


def _load_examples(path: str | Path, tokenizer, max_len: int, max_examples: int | None):
    try:
        from loradial import data
    except ImportError:  # pragma: no cover - data.py comes with the engine
        raise LoradialError("loradial.data is not available", "install loradial with its training extras") from None
    records = data.load_records(path)
    if max_examples is not None:
        records = records[:max_examples]
    examples = data.tokenize_records(records, tokenizer, max_len)
    if not examples:
        raise LoradialError(f"no usable examples in {path}", "check the data file")
    return examples


@dataclasses.dataclass
class EvalSession:
    """A frozen base model loaded once, its tokenized evaluation examples and how to batch them."""

    model: Any
    examples: list[dict]
    pad_id: int
    batch_size: int

    def evaluate(self) -> tuple[float, float, int]:
        """(mean token loss, token accuracy, label tokens) of the model as it is now (hooks included)."""
        return eval_loss(self.model, _batches(self.examples, self.pad_id, self.batch_size))


def open_eval_session(model: str | Path, data: str | Path, max_len: int = EVAL.max_len, batch_size: int = EVAL.batch_size,
                 max_examples: int | None = None, device: str | None = None, trust_remote_code: bool = False) -> EvalSession:
    """Tokenizer, examples and the base model from ``model`` (one ``from_pretrained``)."""
    if batch_size < 1 or max_len < 2:
        raise LoradialError(f"--batch-size must be ≥ 1 and --max-len ≥ 2 (got {batch_size}, {max_len})",
                            f"e.g. --batch-size {EVAL.batch_size} --max-len {EVAL.max_len}")
    if max_examples is not None and max_examples < 1:
        raise LoradialError(f"--max-examples must be ≥ 1, got {max_examples}", "e.g. --max-examples 200 (or leave it out)")
    from loradial.models.hub import resolve_model

    model_path = check_model_dir(resolve_model(model))
    tok = load_tokenizer(model_path, trust_remote_code)
    examples = _load_examples(data, tok, max_len, max_examples)
    base = load_base_model(model_path, device=device, trust_remote_code=trust_remote_code)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    return EvalSession(base, examples, pad, batch_size)


def check_scales(scales: Sequence[float]) -> list[float]:
    scales = [float(c) for c in scales]
    if not scales or any(not math.isfinite(c) for c in scales):
        raise LoradialError(f"invalid --scales {scales}", "e.g. --scales 0,0.5,1,1.5")
    return scales


def scale_curve(session: EvalSession, hooks: AdapterHooks, scales: Sequence[float],
                step: Any = None) -> tuple[list[float], list[float], int]:
    """(losses, accuracies, label tokens) of base + c·(the hooks' current factors) for each c in ``scales``;
    the multiplier is reset to 1 afterwards. ``step()`` is called after each evaluation (progress)."""
    losses, accs, n_tok = [], [], 0
    try:
        for c in scales:
            hooks.set_multiplier(c)
            loss, acc, n_tok = session.evaluate()
            losses.append(loss)
            accs.append(acc)
            if step is not None:
                step()
    finally:
        hooks.set_multiplier(1.0)
    return losses, accs, n_tok


DORA_SCALE_NOTE = "DoRA: at each scale the magnitude renormalization is recomputed; the output is not linear in the scale"


def alpha_sweep(
    adapter: str | Path,
    model: str | Path,
    data: str | Path,
    scales: Sequence[float] = (0, 0.25, 0.5, 0.75, 1, 1.25, 1.5),
    max_len: int = EVAL.max_len,
    batch_size: int = EVAL.batch_size,
    max_examples: int | None = None,
    allow_pickle: bool = False,
    device: str | None = None,
    trust_remote_code: bool = False,
) -> AlphaSweepResult:
    """Eval loss and token accuracy of base + c·(adapter) for each c in ``scales``, loading once.

    c multiplies every module's s, as PEFT's ``rescale_adapter_scale`` does (c = 0 is the base
    model). For DoRA the magnitude renormalization is recomputed at each c (not linear in c).
    ``trust_remote_code``: let ``from_pretrained`` run the model directory's own code (off unless asked).
    """
    scales = check_scales(scales)
    ad = load_adapter(adapter, allow_pickle=allow_pickle, verb=features.ALPHA)
    session = open_eval_session(model, data, max_len, batch_size, max_examples, device, trust_remote_code=trust_remote_code)
    notes = ([DORA_SCALE_NOTE] if ad.use_dora else []) + saved_note(ad)
    with AdapterHooks(session.model, ad) as hooks:
        losses, accs, n_tok = scale_curve(session, hooks, scales)
    best = min(range(len(scales)), key=lambda i: losses[i])
    return AlphaSweepResult(
        adapter=str(adapter), model=str(model), data=str(data), n_examples=len(session.examples), n_tokens=n_tok,
        scales=scales, losses=losses, accuracies=accs, best_scale=scales[best], best_loss=losses[best],
        loss_at_1=losses[scales.index(1.0)] if 1.0 in scales else None, notes=notes,
    )
