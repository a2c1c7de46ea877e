"""Opt-in CUDA graphs for the engine's steady-state training step (``cuda_graphs=True``, ``--cuda-graphs``).

The step of K adapters is thousands of small kernels; replaying them as one captured CUDA graph
takes the host out of the loop. A graph needs static shapes and no host synchronisation, so here
every micro-batch is padded to one length T (the longest training example, rounded up to 8 — the
data is already cut to ``max_len``) and to ``batch_size`` rows (missing rows at an epoch's end are
padding rows without labels), the loss is taken over all m·T positions with a 0/1 label weight
(clamped targets where there is no label: weight 0, so exactly no gradient), and the learning
rates and label count are device tensors written before each replay.

The first ``warmup`` steps run the same code eagerly on a side stream (they are real steps),
the next one is captured and replayed, and every later step is a replay. Dropping adapters
(halving, divergence) rebuilds the buckets, so the graph is captured again. The result equals the
eager engine's up to the order of floating-point sums (``benchmarks/engine/check_graphs.py``
checks it on a GPU). What cannot be captured is refused with a LoradialError, never run
differently: a CPU, gradient checkpointing, a 4-bit base, dropout (the masks would come from the
graph's random stream, not the eager one) and the per-adapter optimizer (it takes lrs as floats).
"""

from __future__ import annotations

import torch

from loradial.errors import LoradialError, runtime_failure

WARMUP = 3


def check_graphable(device: torch.device, *, gradient_checkpointing: bool, load_in_4bit: bool, dropout: float,
                    optimizer: str) -> None:
    """Refuse what a captured step could not reproduce (one clear error instead of a silent difference)."""
    if device.type != "cuda":
        raise LoradialError(f"--cuda-graphs needs a CUDA GPU; this run is on {device.type}",
                            "drop --cuda-graphs (it only removes launch overhead on a GPU)")
    if gradient_checkpointing:
        raise LoradialError("--cuda-graphs cannot be combined with --gradient-checkpointing",
                            "drop one of them (graphs keep all activations; lower --batch-size if memory is short)")
    if load_in_4bit:
        raise LoradialError("--cuda-graphs cannot be combined with --load-in-4bit", "drop one of them")
    if dropout > 0:
        raise LoradialError(f"--cuda-graphs needs lora_dropout 0 (got {dropout})",
                            "use --dropout 0, or train without --cuda-graphs")
    if optimizer != "flat":
        raise LoradialError(f"--cuda-graphs needs the flat optimizer (got {optimizer!r})", "use optimizer='flat'")


def static_batch(examples: list[dict], m: int, T: int, pad_token_id: int | None) -> dict[str, torch.Tensor]:
    """CPU tensors of one padded micro-batch: ids, mask (m, T); targets, weight (m·T,); n_labels, n_tokens."""
    from loradial.data import IGNORE_INDEX

    pad = 0 if pad_token_id is None else int(pad_token_id)
    ids = torch.full((m, T), pad, dtype=torch.long)
    mask = torch.zeros((m, T), dtype=torch.long)
    labels = torch.full((m, T + 1), IGNORE_INDEX, dtype=torch.long)
    for i, ex in enumerate(examples):
        L = len(ex["input_ids"])
        ids[i, :L] = torch.tensor(ex["input_ids"], dtype=torch.long)
        mask[i, :L] = 1
        labels[i, :L] = torch.tensor(ex.get("labels", ex["input_ids"]), dtype=torch.long)
    mask[len(examples):] = 1  # padding rows attend to their pad tokens (no fully masked row, no NaN); no labels
    nxt = labels[:, 1:].reshape(-1)  # position t predicts label t+1
    weight = (nxt != IGNORE_INDEX)
    return {"ids": ids, "mask": mask, "targets": torch.where(weight, nxt, 0), "weight": weight.float(),
            "n_labels": int(weight.sum()), "n_tokens": int(mask[:len(examples)].sum())}


def static_losses(e, ids: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor,
                  K: int) -> torch.Tensor:
    """The engine's per-slice loss sums (K,) with static shapes: every position's loss times its 0/1 label weight."""
    with e._autocast():
        h = e._hidden(ids.repeat(K, 1), mask.repeat(K, 1))
        tok = e.head.token_losses(h.reshape(-1, h.shape[-1]), targets.repeat(K), e.amp)
    return (tok.view(K, -1) * weight).sum(dim=1)


def graphed_train_step(e) -> None:
    """``Engine.train_step`` through a GraphedStep (built again whenever the engine rebuilt its buckets)."""
    if e._graph is None:
        e._graph = GraphedStep(e)
    examples = [e._examples(e.data.next(), e.train_examples) for _ in range(e.grad_accum)]
    lrs = [e.configs[n].lr_at(e.step, e.total_steps) for n in e.active]
    loss, norms, n_tokens, n_labels = e._graph.step(examples, lrs)
    e.step += 1
    e.tokens_seen += n_tokens * len(e.active)
    e._queue(e.step, loss, norms, lrs, n_tokens, n_labels)


class GraphedStep:
    """The engine's train step with static inputs; eager for ``warmup`` calls, then one captured graph."""

    def __init__(self, engine, warmup: int = WARMUP):
        e = engine
        self.e, self.warmup, self.calls = e, warmup, 0
        self.K, self.m, self.accum = len(e.active), e.batch_size, e.grad_accum
        T = max(len(ex["input_ids"]) for ex in e.train_examples)
        self.T = -(-T // 8) * 8
        dev = e.device
        A, m, T = self.accum, self.m, self.T
        self.ids = torch.zeros((A, m, T), dtype=torch.long, device=dev)
        self.mask = torch.ones((A, m, T), dtype=torch.long, device=dev)
        self.targets = torch.zeros((A, m * T), dtype=torch.long, device=dev)
        self.weight = torch.zeros((A, m * T), dtype=torch.float32, device=dev)
        self.n_labels = torch.ones((), dtype=torch.float32, device=dev)
        self.lrs = torch.zeros(self.K, dtype=torch.float32, device=dev)
        self.loss = torch.zeros(self.K, dtype=torch.float32, device=dev)
        self.norms = torch.zeros(self.K, dtype=torch.float32, device=dev)
        self.graph = None
        self._copied = None
        cuda = dev.type == "cuda"  # (on a CPU only the eager warm-up path runs: the tests check its math)
        self.stream = torch.cuda.Stream(dev) if cuda else None
        # host staging (pinned) for one step's inputs: a single copy per tensor before each replay
        self._host = {n: torch.empty(t.shape, dtype=t.dtype, pin_memory=cuda) for n, t in
                      (("ids", self.ids), ("mask", self.mask), ("targets", self.targets), ("weight", self.weight),
                       ("lrs", self.lrs), ("n_labels", self.n_labels))}

    def _body(self) -> None:
        e, K = self.e, self.K
        e.opt.zero_grad()
        total = torch.zeros(K, dtype=torch.float32, device=e.device)
        for i in range(self.accum):
            losses = static_losses(e, self.ids[i], self.mask[i], self.targets[i], self.weight[i], K)
            (losses.sum() / self.n_labels).backward()
            total += losses.detach()
        loss = total / self.n_labels
        self.loss.copy_(loss)
        self.norms.copy_(e.opt.step(self.lrs, loss))

    def step(self, examples: list[list[dict]], lrs: list[float]) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """One optimizer step on ``grad_accum`` lists of examples; (loss, norms, n_tokens, n_labels)."""
        batches = [static_batch(ex, self.m, self.T, self.e.pad_token_id) for ex in examples]
        h = self._host
        if self._copied is not None:  # the previous step's copies out of the staging buffers are done
            self._copied.synchronize()
        for i, b in enumerate(batches):
            for n in ("ids", "mask", "targets", "weight"):
                h[n][i].copy_(b[n])
        n_labels = sum(b["n_labels"] for b in batches)
        h["lrs"].copy_(torch.tensor(lrs, dtype=torch.float32))
        h["n_labels"].fill_(float(max(n_labels, 1)))
        if self.stream is None:
            for n in h:
                getattr(self, n).copy_(h[n])
            if self.calls >= self.warmup:
                raise LoradialError("CUDA graphs need a CUDA GPU", "drop --cuda-graphs")
            self._body()
            self.calls += 1
            return self.loss.clone(), self.norms.clone(), sum(b["n_tokens"] for b in batches), n_labels
        cur = torch.cuda.current_stream(self.e.device)
        for n in h:
            getattr(self, n).copy_(h[n], non_blocking=True)
        self._copied = torch.cuda.Event()
        self._copied.record(cur)
        if self.calls < self.warmup:  # eager, on a side stream (as capture will run), real steps
            self.stream.wait_stream(cur)
            with torch.cuda.stream(self.stream):
                self._body()
            cur.wait_stream(self.stream)
        else:
            if self.graph is None:
                self._capture()
            self.graph.replay()
        self.calls += 1
        return self.loss.clone(), self.norms.clone(), sum(b["n_tokens"] for b in batches), n_labels

    def _capture(self) -> None:
        torch.cuda.synchronize(self.e.device)
        g = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(g, stream=self.stream):
                self._body()
        except Exception as err:  # an op that syncs with the host or changes shape: refuse, loudly
            raise runtime_failure(f"could not capture the training step as a CUDA graph: {err}",
                                  "train without --cuda-graphs (and report the model type)") from None
        self.graph = g
