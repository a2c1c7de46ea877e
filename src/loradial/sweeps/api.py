"""``loradial.sweep``: which rank / alpha / variant / learning rate is best on *your* data?

Every config of the grid (``sweeps/grid.py``) trains on one frozen base through the multi-adapter
engine: configs are grouped into packs that fit the device (``sweeps/pack.py``), each pack trains its
adapters side by side, each on its own slice of every batch, and the packs run one after another
on one device or one per device. With ``halving`` the budget is cut into rungs
(``sweeps/halving.py``): after each rung all surviving configs are compared by eval loss at the same
step and the worse half stops; the survivors are packed again, so their freed batch slots are
reused. The run is durable (``sweeps/state.py``): a ``kill -9`` at any moment and ``--resume`` end with
the same results.json and adapters as an uninterrupted run.

Run order: for each rung, for each pack of the configs alive at that rung, one *segment* trains the
pack from the rung's start step to its end step, evaluates, and checkpoints every member
separately; then, between rungs, the halving decision; at the end, results.json.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Sequence

from loradial.sweeps.results import SweepResult
from loradial.settings import DEFAULT, MAX_NEW_TOKENS, SweepSettings, TrainSettings, TunePolicy
from loradial.sweeps.state import SweepDir, claim_new_dir, create_sweep_dir, open_sweep_dir


def sweep(
    model: str | None = None,
    data: str | None = None,
    *,
    out: str | Path,
    ranks: Sequence[int] | None = None,
    alphas: str | Sequence[float] | None = None,
    variants: Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
    lrs: Sequence[float] | None = None,
    lr_rank_exponent: float | None = None,
    seeds: Sequence[int] | None = None,
    grid: str | Path | None = None,
    steps: int | None = None,
    epochs: float | None = None,
    batch_size: int = DEFAULT.batch_size,
    max_len: int = DEFAULT.max_len,
    eval_data: str | None = None,
    eval_fraction: float = SweepSettings.model_fields["eval_fraction"].default,
    eval_every: int | None = None,
    halving: bool = False,
    halving_at: str | Sequence[float] | None = None,
    gpu_memory: float | None = None,
    memory_fraction: float = SweepSettings.model_fields["memory_fraction"].default,
    devices: Sequence[str] | None = None,
    pack_size: int | None = None,
    dtype: str = DEFAULT.dtype,
    seed: int = DEFAULT.seed,
    checkpoint_every: int | None = None,
    gradient_checkpointing: bool = DEFAULT.gradient_checkpointing,
    grad_accum: int = DEFAULT.grad_accum,
    dropout: float = DEFAULT.dropout,
    packing: bool = DEFAULT.packing,
    load_in_4bit: bool = DEFAULT.load_in_4bit,
    cuda_graphs: bool = DEFAULT.cuda_graphs,
    ray: str | None = None,
    ray_workers: int | None = None,
    trust_remote_code: bool = DEFAULT.trust_remote_code,
    tune: TunePolicy | None = None,
    metric: str = "eval_loss",
    max_new_tokens: int = MAX_NEW_TOKENS,
    full_lrs: Sequence[float] | None = None,
    resume: bool = False,
    progress: bool = False,
) -> SweepResult:
    """Train the grid, save every adapter, write results.json and return it as a ``SweepResult``.

    ``gradient_checkpointing``, ``grad_accum``, ``dropout`` (every config's lora_dropout), ``packing``
    and ``load_in_4bit`` mean what they mean for ``loradial.train``; ``batch_size`` is the micro-batch
    (an optimizer step sees ``batch_size x grad_accum`` sequences per config). The memory packer
    plans with gradient checkpointing and the 4-bit base when they are on.

    ``ray`` runs the packs on a Ray cluster instead of local devices ('auto': the running cluster,
    'local': a private one here, or an address), one worker per GPU (``ray_workers`` of them; see
    ``loradial.sweeps.ray_exec``).

    ``trust_remote_code`` lets a model that ships its own code (``auto_map``) run it (kept in sweep.yaml,
    so workers and ``--resume`` use it too).

    ``metric='exact_match'`` picks the best config by greedy exact match of the eval completions
    (``max_new_tokens`` at most; needs ``eval_data`` with prompt/completion or chat records), reported
    beside eval loss for every config trained to the end.

    ``variants`` may hold ``full``: full fine-tuning as the reference, one config per learning rate of
    ``full_lrs`` (default: each of ``lrs`` / 10), each its own pack with its own model copy (refused when it
    does not fit); results.json then compares every adapter with it (``full_ft``, ``full_ft_gain_fraction``),
    and its ``adapters/<name>/`` is a Hugging Face model directory.

    ``tune`` replaces plain halving by ``tune``'s rung-end policy (``sweeps/tuning.py``; ``loradial tune``
    passes it).

    ``resume=True`` continues the sweep in ``out`` with the settings of its sweep.yaml (only
    ``devices`` / ``ray`` may change); finished configs are never retrained.
    """
    from loradial.sweeps import setup as sweep_setup, runner as sweep_runner

    t0 = time.time()
    if resume:
        sd = open_sweep_dir(out)
        settings = sd.read_settings()
        if sd.results_path.exists() and sd.read_state().get("finished"):
            return _result_from_file(sd)
        sd.lock()
        ctx = sweep_setup.load_context(settings, devices, ray, ray_workers)
    else:
        with claim_new_dir(out) as sd:  # locked from here: a concurrent start into `out` exits 2
            train = TrainSettings.checked("flags", batch_size=batch_size, max_len=max_len, dtype=dtype, seed=seed,
                                          gradient_checkpointing=gradient_checkpointing, grad_accum=grad_accum,
                                          dropout=dropout, packing=packing, load_in_4bit=load_in_4bit,
                                          trust_remote_code=trust_remote_code, cuda_graphs=cuda_graphs)
            settings, ctx = sweep_setup.resolve(
                model=model, data=data, ranks=ranks, alphas=alphas, variants=variants, targets=targets, lrs=lrs,
                lr_rank_exponent=lr_rank_exponent, seeds=seeds, grid=grid, steps=steps, epochs=epochs,
                eval_data=eval_data, eval_fraction=eval_fraction, eval_every=eval_every, halving=halving,
                halving_at=halving_at, gpu_memory=gpu_memory, memory_fraction=memory_fraction, devices=devices, pack_size=pack_size,
                checkpoint_every=checkpoint_every, train=train, ray=ray, ray_workers=ray_workers, tune=tune,
                metric=metric, max_new_tokens=max_new_tokens, full_lrs=full_lrs,
            )
            create_sweep_dir(sd, settings.to_yaml(), sweep_runner.initial_state(settings))
    from loradial.sweeps.segment import release

    try:
        settings = sweep_runner.run(sd, settings, ctx, progress=progress)
        return sweep_runner.finish(sd, settings, ctx, wall_seconds=time.time() - t0, resumed=resume)
    finally:
        release()
        sd.unlock()


def _result_from_file(sd: SweepDir) -> SweepResult:
    """A finished sweep resumed again: report results.json as it stands, train nothing."""
    from loradial.io import read_json

    data = read_json(sd.results_path, "sweep results")
    fields = {f.name for f in dataclasses.fields(SweepResult)}
    kw = {k: v for k, v in data.items() if k in fields}
    kw["resumed"] = True
    return SweepResult(**kw)
