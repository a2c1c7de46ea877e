"""The rules behind ``loradial recommend`` and ``loradial diagnose``: data, not code.

Every number a recommendation uses lives here, with the source it came from, so a user can read,
question and override it (``--rules FILE``: a YAML file whose keys are merged over these defaults;
dicts merge key by key, lists and scalars replace). Folklore is labelled as folklore:

* ``seed``      the seed guide's task table (blog-post lore; no primary source);
* ``loradial``  our own heuristic (thresholds on data size, dropout by data size, batch target);
* everything else names a paper or a trainer's published scripts, with what it actually supports.

These are *starting points*. ``loradial sweep`` measures what is best on the user's data.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

from loradial.errors import LoradialError

TASKS = ("style", "standard", "domain-shift", "full-parity")
VERDICTS = ("underfitting", "overfitting", "memorizing", "unstable", "too_few_steps", "healthy")

#: key -> (citation, what it supports here). Claims were checked against the papers' text or the
#: authors' scripts; where a summary is ours it says so.
SOURCES: dict[str, dict[str, str]] = {
    "hu2021": {
        "cite": "Hu et al. 2021, LoRA: Low-Rank Adaptation of Large Language Models, arXiv:2106.09685",
        "supports": "s = alpha/r; alpha is set to the first r tried and not tuned, because with Adam tuning "
                    "alpha is roughly the same as tuning the learning rate (sec. 4.1)",
    },
    "kalajdzievski2023": {
        "cite": "Kalajdzievski 2023, A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA, arXiv:2312.03732",
        "supports": "s = alpha/sqrt(r) (rsLoRA) keeps activations and gradients stable as r grows; with "
                    "alpha/r and a fixed alpha, larger ranks stop helping (gradient collapse)",
    },
    "dettmers2023": {
        "cite": "Dettmers et al. 2023, QLoRA: Efficient Finetuning of Quantized LLMs, arXiv:2305.14314",
        "supports": "LoRA on all linear layers is needed to match 16-bit full fine-tuning; 'LoRA r is unrelated "
                    "to final performance if LoRA is used on all layers'; alpha kept fixed and LR searched since "
                    "alpha is proportional to LR; their Guanaco scripts (artidoro/qlora scripts/finetune_guanaco_"
                    "{7b,65b}.sh): r=64, alpha=16, lr 2e-4 (7B/13B) and 1e-4 (33B/65B), dropout 0.1 (7B/13B) and "
                    "0.05 (33B/65B), 16 sequences per step, max_grad_norm 0.3",
    },
    "biderman2024": {
        "cite": "Biderman et al. 2024, LoRA Learns Less and Forgets Less, arXiv:2405.09673",
        "supports": "for code and math, ranks 16-64 tend not to suffice; if memory allows target all modules "
                    "with r=256; alpha = 2r; LoRA suits instruction fine-tuning more than continued pretraining; "
                    "sweep LR in [1e-5, 5e-4] and take the highest stable value",
    },
    "schulman2025": {
        "cite": "Schulman and Thinking Machines Lab 2025, LoRA Without Regret, https://thinkingmachines.ai/blog/lora/",
        "supports": "LoRA matches full fine-tuning in a low-regret regime when applied to all layers (MLP "
                    "especially); optimal LoRA LR is about 10x the full-FT LR and roughly rank-invariant under "
                    "1/r scaling with a fixed alpha; low ranks fall behind once the dataset outgrows their "
                    "capacity; LoRA tolerates large batches less well than full FT",
    },
    "tinker_cookbook": {
        "cite": "Thinking Machines Lab, tinker-cookbook, tinker_cookbook/hyperparam_utils.py get_lr() "
                "(github.com/thinking-machines-lab/tinker-cookbook, commit 02face34)",
        "supports": "'empirically-determined optimal LoRA learning rates from a comprehensive SFT sweep across all "
                    "Tinker models (tulu3 dataset, batch_size=128, 780 steps)': Llama-3.2-1B 1e-3, Llama-3.2-3B 1e-3, "
                    "Llama-3.1-8B 3e-4, Llama-3.1-70B 3e-4, Llama-3.3-70B-Instruct 3e-4; Qwen3-4B-Instruct 1e-3, Qwen3-8B "
                    "1e-3, Qwen3-30B-A3B 1e-3, Qwen3-32B 3e-4, Qwen3-235B-A22B 3e-4; an earlier version of get_lr "
                    "computed lr = 5e-5 * 10 * (2000 / hidden_size) ** 0.781 for Llama (0.0775 for Qwen)",
    },
    "liu2024": {
        "cite": "Liu et al. 2024, DoRA: Weight-Decomposed Low-Rank Adaptation, arXiv:2402.09353",
        "supports": "magnitude/direction decomposition; reports consistent gains over LoRA; no inference "
                    "overhead once merged",
    },
    "peft_dora": {
        "cite": "PEFT docs, DoRA (huggingface.co/docs/peft/main/package_reference/lora_variant_dora)",
        "supports": "DoRA can improve LoRA especially at low ranks; it is optimized (faster, less memory) "
                    "in eval mode or when dropout is 0",
    },
    "seed": {
        "cite": "the seed guide's task table and escalation ladder (blog-post folklore, no primary source)",
        "supports": "style r 4-8 alpha=r; standard 16-32 alpha=r or 2r; domain shift 64-128 alpha=r; "
                    "near-full-FT parity 128-256 alpha=r or r/2 with rsLoRA; underfit -> double r; "
                    "overfit -> lower r or alpha=r/2; revisit alpha when LR changes; halve alpha at inference "
                    "for an over-trained adapter",
    },
    "loradial": {
        "cite": "loradial heuristic (ours; no external source - override with --rules, measure with loradial sweep)",
        "supports": "data-size bands, dropout by data size, effective batch target, LR-rank exponent 0",
    },
}


# --- alpha expressions ---------------------------------------------------------------------------
_ALPHA_RE = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*\*?\s*)?r\s*(?:/\s*(\d+(?:\.\d+)?))?\s*$")


def alpha_from_rule(rule: str | float | int, r: int) -> float:
    """'r' -> r, '2r' -> 2r, 'r/2' -> r/2, a number -> that number (alpha always explicit)."""
    if isinstance(rule, (int, float)) and not isinstance(rule, bool):
        if rule <= 0:
            raise LoradialError(f"alpha rule {rule!r} must be positive", "use e.g. 'r', '2r', 'r/2' or 16")
        return float(rule)
    m = _ALPHA_RE.match(str(rule))
    if not m:
        raise LoradialError(f"invalid alpha rule {rule!r}", "use 'r', '2r', 'r/2', '0.5r' or a number")
    mult = float(m.group(1) or 1.0) / float(m.group(2) or 1.0)
    return mult * r


def plain_number(x: float) -> float | int:
    """16.0 -> 16 (configs read better with integral alphas), other floats unchanged."""
    return int(x) if float(x).is_integer() else float(x)


# --- the learning rate by model width -----------------------------------------------------------
def lr_for_width(hidden_size: float, anchors: list[tuple[float, float]] | list[list[float]],
                 below_exponent: float = 0.781, above_exponent: float = 0.0) -> float:
    """The LoRA learning rate for a model of width ``hidden_size`` from measured (width, best LR) anchors.

    With anchors (h_0, lr_0) < ... < (h_n, lr_n) sorted by width:

    * h_i <= h <= h_i+1: linear interpolation in log-log space,
      ``log lr = log lr_i + (log h - log h_i) / (log h_i+1 - log h_i) * (log lr_i+1 - log lr_i)``;
    * h < h_0: ``lr_0 * (h_0 / h) ** below_exponent`` (a narrower model takes a larger LR);
    * h > h_n: ``lr_n * (h_n / h) ** above_exponent``.

    Source of the defaults (``DEFAULT_RULES['learning_rate']['by_width']``): Thinking Machines'
    tinker-cookbook ``hyperparam_utils.get_lr`` returns "empirically-determined optimal LoRA learning
    rates from a comprehensive SFT sweep across all Tinker models (tulu3 dataset, batch_size=128, 780
    steps)"; for the Llama 3 family these are 1e-3 at 1B (hidden 2048) and 3B (3072), 3e-4 at 8B
    (4096) and 70B (8192). Their earlier ``get_lr`` fitted ``lr = 5e-5 * 10 * (2000 / hidden_size) **
    0.781`` for Llama (exponent 0.0775 for Qwen), the ``below_exponent`` here; no anchor below 1B was
    published, so small models rely on that exponent - loradial checks it on its own 4M and 19M
    models (benchmarks/recommend/RESULTS.md). LoRA Without Regret (Schulman et al. 2025) explains the
    size: the best LoRA LR is about 10x the full fine-tuning LR, which falls with width.

    Keyed on width, not on parameter count: a mixture of experts (Qwen3-30B-A3B, hidden 2048) has
    the cookbook LR of a dense model of its width (1e-3), not of its total size. Two models of one
    width can differ by ~3x (Qwen3-8B 1e-3 vs Llama-3.1-8B 3e-4, both hidden 4096): a starting
    point to sweep around, not an optimum.
    """
    pts = sorted((float(h), float(lr)) for h, lr in anchors)
    h = float(hidden_size)
    if h <= 0 or not math.isfinite(h):
        raise LoradialError(f"hidden size must be a positive number, got {hidden_size!r}")
    if h <= pts[0][0]:
        return pts[0][1] * (pts[0][0] / h) ** below_exponent
    if h >= pts[-1][0]:
        return pts[-1][1] * (pts[-1][0] / h) ** above_exponent
    for (h0, lr0), (h1, lr1) in zip(pts, pts[1:]):
        if h0 <= h <= h1:
            t = (math.log(h) - math.log(h0)) / (math.log(h1) - math.log(h0))
            return math.exp(math.log(lr0) + t * (math.log(lr1) - math.log(lr0)))
    raise AssertionError("unreachable")  # pragma: no cover


def width_rule_from(cfg: Any) -> tuple[list[tuple[float, float]], float, float]:
    """Validate ``learning_rate.by_width`` -> (anchors sorted by width, below_exponent, above_exponent)."""
    if not isinstance(cfg, dict):
        raise LoradialError(f"rules: learning_rate.by_width must be a mapping, got {cfg!r}",
                            "keys: anchors ([[hidden_size, lr], ...]), below_exponent, above_exponent")
    anchors = cfg.get("anchors")
    ok = isinstance(anchors, list) and anchors and all(
        isinstance(a, (list, tuple)) and len(a) == 2 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0 for x in a)
        for a in anchors)
    if not ok:
        raise LoradialError(f"rules: learning_rate.by_width.anchors must be a list of [hidden_size, lr] pairs of "
                            f"positive numbers, got {anchors!r}", "e.g. anchors: [[2048, 1.0e-3], [4096, 3.0e-4]]")
    widths = [float(a[0]) for a in anchors]
    if len(set(widths)) != len(widths):
        raise LoradialError("rules: learning_rate.by_width.anchors has two anchors at one hidden size")
    exps = []
    for key in ("below_exponent", "above_exponent"):
        v = cfg.get(key, 0.0)
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)):
            raise LoradialError(f"rules: learning_rate.by_width.{key} must be a number, got {v!r}")
        exps.append(float(v))
    return sorted((float(h), float(lr)) for h, lr in anchors), exps[0], exps[1]


#: config keys that hold the residual width, first present wins (text_config for multimodal models)
WIDTH_KEYS = ("hidden_size", "n_embd", "d_model", "dim", "model_dim")


def model_width(config: dict[str, Any]) -> int | None:
    """The residual stream width of a model from its config.json (None if none of WIDTH_KEYS is there)."""
    for cfg in (config, config.get("text_config") or {}, config.get("llm_config") or {}):
        if not isinstance(cfg, dict):
            continue
        for key in WIDTH_KEYS:
            v = cfg.get(key)
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v
    return None


def lora_learning_rate(width: int | None, r: int, rules: dict[str, Any]) -> tuple[float, str]:
    """(learning rate, one sentence saying how it was chosen) for a LoRA of rank ``r`` on a model of
    this width: ``learning_rate.fixed`` if set, else ``lr_for_width``; then times
    ``(r / reference_rank) ** -rank_exponent``; rounded to 3 significant digits."""
    cfg = rules["learning_rate"]
    if cfg.get("fixed") is not None:
        base = float(cfg["fixed"])
        why = f"learning_rate.fixed {base:g} from the rules"
    else:
        anchors, below, above = width_rule_from(cfg["by_width"])
        if width is None:
            base = anchors[-1][1]
            why = f"{base:g}: the model's config names no hidden size, so the widest anchor's LR (the smallest)"
        else:
            base = lr_for_width(width, anchors, below, above)
            lo, hi = anchors[0][0], anchors[-1][0]
            if width < lo:
                how = (f"{anchors[0][1]:g} at hidden {lo:g} x ({lo:g}/{width})^{below:g} (the cookbook's earlier Llama fit: "
                       "narrower models take larger LRs)")
            elif width > hi:
                how = f"held at the widest anchor's {anchors[-1][1]:g}" if above == 0 else \
                    f"{anchors[-1][1]:g} at hidden {hi:g} x ({hi:g}/{width})^{above:g}"
            else:
                at = [lr_a for h_a, lr_a in anchors if h_a == width]
                if at:  # exactly on an anchor (a single anchor included)
                    how = f"the anchor's {at[0]:g} at hidden {width}"
                else:
                    (h0, lr0), (h1, lr1) = next((a, b) for a, b in zip(anchors, anchors[1:]) if a[0] <= width <= b[0])
                    how = f"log-log between {lr0:g} at hidden {h0:g} and {lr1:g} at {h1:g}"
            why = f"hidden size {width}: {how}"
    exponent = float(cfg.get("rank_exponent", 0.0))
    ref = float(cfg["reference_rank"])
    lr = float(f"{lr_for_rank(base, r, exponent, ref):.3g}")
    return lr, why


# --- the default rules, as one YAML-shaped dict -------------------------------------------------
DEFAULT_RULES: dict[str, Any] = {
    "tasks": {
        "style": {
            "ranks": [4, 8], "alpha": "r",
            "what": "style / format / tone imitation",
            "sources": ["seed", "hu2021"],
        },
        "standard": {
            "ranks": [16, 32], "alpha": "2r",
            "what": "standard chat, classification, summarization",
            "sources": ["seed", "biderman2024"],
        },
        "domain-shift": {
            "ranks": [64, 128], "alpha": "r",
            "what": "a new domain or code dialect the base model has seen little of",
            "sources": ["seed", "biderman2024"],
        },
        "full-parity": {
            "ranks": [128, 256], "alpha": "r/2",
            "what": "near full-fine-tuning parity on large data",
            "sources": ["seed", "biderman2024", "schulman2025", "kalajdzievski2023"],
        },
    },
    # Which end of a task's rank range to use. tiny -> half the low end (floored at min_rank),
    # normal -> the low end, large -> the high end. Examples and tokens are judged separately;
    # whichever the user gave decides. Source: loradial (ours).
    "data_size": {
        "tiny_examples": 500, "tiny_tokens": 250_000,
        "large_examples": 50_000, "large_tokens": 50_000_000,
        "min_rank": 4,
        "sources": ["loradial", "schulman2025"],
    },
    "rslora_above_rank": 64,            # use_rslora when r > 64 (seed), s = alpha/sqrt(r)
    "target_modules": "all-linear",     # dettmers2023, schulman2025, biderman2024
    "learning_rate": {
        # The LoRA LR by model width (hidden size), see `lr_for_width`: log-log interpolation between
        # measured anchors [hidden_size, best LoRA LR] - the tinker cookbook's SFT sweep for the Llama 3
        # family (1B h=2048: 1e-3, 3B h=3072: 1e-3, 8B h=4096: 3e-4, 70B h=8192: 3e-4) - extended below
        # the smallest anchor by the cookbook's earlier Llama fit lr ~ hidden_size ** -0.781 and held
        # flat above the largest. Checked on the project's own models in benchmarks/recommend/RESULTS.md.
        "by_width": {
            "anchors": [[2048, 1.0e-3], [3072, 1.0e-3], [4096, 3.0e-4], [8192, 3.0e-4]],
            "below_exponent": 0.781,
            "above_exponent": 0.0,
        },
        # A number here replaces the width rule for every model (e.g. 2e-4, the QLoRA scripts' value).
        "fixed": None,
        "reference_rank": 16,
        # lr(r) = lr * (r / reference_rank) ** (-rank_exponent). The often-quoted 0.84 has no primary
        # source we could find; LoRA Without Regret reports the optimal LR roughly rank-invariant under
        # 1/r scaling with a fixed alpha. Default 0 = same LR at every rank; `loradial sweep` measures it.
        "rank_exponent": 0.0,
        "sources": ["tinker_cookbook", "schulman2025", "loradial"],
    },
    # dropout by data-size band; QLoRA used 0.1 (7B/13B) and 0.05 (33B/65B); 0 on large data keeps
    # PEFT's fast DoRA path. The mapping to data size is ours.
    "dropout": {"tiny": 0.1, "normal": 0.05, "large": 0.0, "sources": ["dettmers2023", "peft_dora", "loradial"]},
    "batch": {
        "effective_batch": 16,          # sequences per optimizer step (QLoRA used 16 for <= 13B)
        "micro_batches": [16, 8, 4, 2, 1],
        "memory_headroom": 0.92,        # plan to use at most this fraction of --gpu-memory
        "default_seq_len": 2048,
        "sources": ["dettmers2023", "schulman2025", "loradial"],
    },
    "dora": {"when_memory_allows": True, "sources": ["liu2024", "peft_dora"]},
    # The escalation ladder. `change` values: 'x2' / '/2' multiply or divide, a number or name sets;
    # lora_alpha 'rank_rule' moves alpha with r as the alpha rules do: LoRA keeps alpha/r (s unchanged),
    # rsLoRA keeps alpha (s = alpha/sqrt(r) shrinks with sqrt(r), its rank-stable choice).
    "ladder": {
        "underfitting": [
            {"action": "double_rank", "change": {"r": "x2", "lora_alpha": "rank_rule"},
             "why": "more capacity; alpha follows r as the task rule does (LoRA keeps alpha/r; rsLoRA keeps alpha)",
             "sources": ["seed", "kalajdzievski2023", "schulman2025"]},
            {"action": "all_linear_targets", "change": {"target_modules": "all-linear"},
             "why": "LoRA on every linear layer matters more than rank", "sources": ["dettmers2023", "schulman2025"]},
            {"action": "raise_lr", "change": {"learning_rate": "x2"},
             "why": "a too-low LR looks like underfitting; LoRA's best LR is ~10x full fine-tuning's",
             "sources": ["schulman2025"]},
        ],
        "overfitting": [
            {"action": "alpha_sweep", "command": "loradial alpha-sweep {adapter} --model {model} --data EVAL_DATA --scales 0.25,0.5,0.75,1",
             "why": "first try the trained adapter at half strength (alpha/2 at inference): no retraining",
             "sources": ["seed"]},
            {"action": "stop_at_best", "change": {"steps": "eval_min"},
             "why": "keep the checkpoint where eval loss bottomed out, or train fewer epochs", "sources": ["loradial"]},
            {"action": "halve_alpha", "change": {"lora_alpha": "/2"},
             "why": "alpha = r/2 halves s, which under Adam acts like halving the LR", "sources": ["seed", "hu2021"]},
            {"action": "halve_rank", "change": {"r": "/2", "lora_alpha": "rank_rule"},
             "why": "less capacity to memorize", "sources": ["seed"]},
        ],
        "memorizing": [
            {"action": "alpha_sweep", "command": "loradial alpha-sweep {adapter} --model {model} --data EVAL_DATA --scales 0.25,0.5,0.75,1",
             "why": "first try the trained adapter at half strength (alpha/2 at inference): no retraining",
             "sources": ["seed"]},
            {"action": "fewer_steps", "change": {"steps": "/2"},
             "why": "train loss near zero means the data is being memorized: train less", "sources": ["loradial"]},
            {"action": "halve_rank", "change": {"r": "/2", "lora_alpha": "rank_rule"},
             "why": "less capacity to memorize", "sources": ["seed"]},
            {"action": "more_dropout", "change": {"lora_dropout": 0.1},
             "why": "regularize small data", "sources": ["dettmers2023"]},
        ],
        "unstable": [
            # `when` / `unless`: the step applies only if diagnose's evidence has (lacks) that flag
            {"action": "lower_lr", "change": {"learning_rate": "/10"}, "when": "diverged",
             "why": "the run diverged (its loss ended above where it started, or above the base model's, or far "
                    "above its minimum): the LR is far too high, not a little - go down an order of magnitude "
                    "(or to loradial recommend's LR for the model)",
             "sources": ["schulman2025", "loradial"]},
            {"action": "halve_lr", "change": {"learning_rate": "/2"}, "unless": "diverged",
             "why": "spikes, divergence and exploding gradients are LR (x s) too high",
             "sources": ["biderman2024"]},
            {"action": "revisit_alpha", "change": {"lora_alpha": "/2"},
             "why": "s and LR multiply under Adam: when one changes, re-check the other", "sources": ["seed", "hu2021"]},
            {"action": "clip_gradients", "change": {"max_grad_norm": 0.3},
             "why": "QLoRA clipped at 0.3", "sources": ["dettmers2023"]},
        ],
        "too_few_steps": [
            {"action": "train_longer", "change": {"steps": "x2"},
             "why": "loss still falling (or too few points to judge): train longer before changing r or alpha",
             "sources": ["loradial"]},
        ],
        "healthy": [
            {"action": "keep", "change": {},
             "why": "nothing to fix; confirm the rank around it on your data", "sources": ["loradial"]},
            {"action": "sweep_around", "command": "loradial sweep --ranks {half_r},{r},{double_r}",
             "why": "measure whether half or double the rank does as well", "sources": ["loradial"]},
        ],
    },
}


# --- loading and validation ----------------------------------------------------------------------
def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Dicts merge key by key; anything else in ``override`` replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_rules(path: str | Path | None = None, **overrides: Any) -> dict[str, Any]:
    """The default rules, merged with a YAML file (``--rules``) and keyword overrides; validated."""
    rules = DEFAULT_RULES
    if path is not None:
        import yaml

        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LoradialError(f"rules file not found: {p}", "pass a YAML file with keys like tasks:, learning_rate:") from None
        except yaml.YAMLError as e:
            raise LoradialError(f"rules file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise LoradialError(f"rules file {p} must hold a mapping", "top-level keys: tasks, data_size, learning_rate, ...")
        unknown = sorted(set(data) - set(DEFAULT_RULES))
        if unknown:
            raise LoradialError(f"unknown rules keys {unknown} in {p}", f"known keys: {', '.join(DEFAULT_RULES)}")
        rules = deep_merge(rules, data)
    if overrides:
        rules = deep_merge(rules, overrides)
    validate_rules(rules)
    return rules


def _positive_number(value: Any, where: str, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise LoradialError(f"rules: {where} must be a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")


def validate_rules(rules: dict[str, Any]) -> None:
    """Raise LoradialError naming the first malformed entry."""
    for name, task in rules["tasks"].items():
        ranks = task.get("ranks")
        if not (isinstance(ranks, list) and len(ranks) == 2 and all(isinstance(x, int) and x > 0 for x in ranks)
                and ranks[0] <= ranks[1]):
            raise LoradialError(f"rules: tasks.{name}.ranks must be [low, high] positive integers, got {ranks!r}")
        alpha_from_rule(task.get("alpha", "r"), ranks[0])
    ds = rules["data_size"]
    for key in ("tiny_examples", "tiny_tokens", "large_examples", "large_tokens", "min_rank"):
        _positive_number(ds.get(key), f"data_size.{key}")
    if ds["tiny_examples"] >= ds["large_examples"] or ds["tiny_tokens"] >= ds["large_tokens"]:
        raise LoradialError("rules: data_size tiny thresholds must be below the large ones")
    lr = rules["learning_rate"]
    gone = sorted({"base", "base_large_model", "large_model_params"} & set(lr))
    if gone:
        raise LoradialError(f"rules: learning_rate.{gone[0]} is no longer a rule: the LR now follows the model's width "
                            "(learning_rate.by_width)",
                            "set learning_rate.fixed: 2.0e-4 for one LR for every model, or edit by_width.anchors")
    _positive_number(lr.get("reference_rank"), "learning_rate.reference_rank")
    if lr.get("fixed") is not None:
        _positive_number(lr["fixed"], "learning_rate.fixed")
    width_rule_from(lr.get("by_width"))
    ok = isinstance(lr.get("rank_exponent"), (int, float)) and math.isfinite(lr["rank_exponent"])
    if not ok:
        raise LoradialError(f"rules: learning_rate.rank_exponent must be a number, got {lr.get('rank_exponent')!r}")
    for band in ("tiny", "normal", "large"):
        d = rules["dropout"].get(band)
        _positive_number(d, f"dropout.{band}", allow_zero=True)
        if d >= 1:
            raise LoradialError(f"rules: dropout.{band} must be in [0, 1), got {d}")
    b = rules["batch"]
    _positive_number(b.get("effective_batch"), "batch.effective_batch")
    _positive_number(b.get("default_seq_len"), "batch.default_seq_len")
    _positive_number(b.get("memory_headroom"), "batch.memory_headroom")
    mbs = b.get("micro_batches")
    if not (isinstance(mbs, list) and mbs and all(isinstance(x, int) and x > 0 for x in mbs)):
        raise LoradialError(f"rules: batch.micro_batches must be a list of positive integers, got {mbs!r}")
    _positive_number(rules.get("rslora_above_rank"), "rslora_above_rank")
    for verdict, steps in rules["ladder"].items():
        if verdict not in VERDICTS:
            raise LoradialError(f"rules: ladder.{verdict} is not a verdict", f"verdicts: {', '.join(VERDICTS)}")
        if not isinstance(steps, list) or not all(isinstance(s, dict) and "action" in s for s in steps):
            raise LoradialError(f"rules: ladder.{verdict} must be a list of steps with an 'action'")
        for step in steps:
            for key in ("when", "unless"):
                if key in step and not isinstance(step[key], str):
                    raise LoradialError(f"rules: ladder.{verdict} step {step['action']!r}: {key} must name an "
                                        f"evidence flag (e.g. diverged), got {step[key]!r}")


def cited(keys: list[str], rules: dict[str, Any] | None = None) -> list[str]:
    """Source keys -> their citations (unknown keys are kept verbatim: a user's own rules file)."""
    return [SOURCES[k]["cite"] if k in SOURCES else k for k in keys]


# --- the ladder applied to a concrete config ------------------------------------------------------
def _apply_number(value: Any, op: Any) -> Any:
    if isinstance(op, str) and op.startswith("x"):
        return value * float(op[1:]) if isinstance(value, (int, float)) else None
    if isinstance(op, str) and op.startswith("/"):
        return value / float(op[1:]) if isinstance(value, (int, float)) else None
    return op


def ladder_step_config(step: dict[str, Any], config: dict[str, Any]) -> dict[str, Any] | None:
    """The config after one ladder step (keys that do not change are left out); None if nothing to set.

    ``config`` may hold r, lora_alpha, use_rslora, learning_rate, lora_dropout, target_modules; a
    change to a key whose current value is unknown is reported as the operation itself ('x2').
    """
    from loradial.spec import alpha_for_same_scale

    change = step.get("change") or {}
    out: dict[str, Any] = {}
    r_old = config.get("r")
    for key, op in change.items():
        if key == "lora_alpha" and op == "rank_rule":
            continue
        if key == "r" and isinstance(r_old, int):
            out["r"] = max(1, int(round(_apply_number(r_old, op))))
        elif key in config and config[key] is not None and isinstance(config[key], (int, float)) and not isinstance(config[key], bool):
            new = _apply_number(config[key], op)
            out[key] = plain_number(new) if key == "lora_alpha" else (float(f"{new:.3g}") if isinstance(new, float) else new)
        else:
            out[key] = op
    if change.get("lora_alpha") == "rank_rule" and "r" in out and config.get("lora_alpha") and isinstance(r_old, int) \
            and not config.get("use_rslora"):
        out["lora_alpha"] = plain_number(round(alpha_for_same_scale(config["lora_alpha"], r_old, out["r"]), 4))
    return out or None


def _is_op(value: Any) -> bool:
    return isinstance(value, str) and (value[:1] in ("x", "/") or value in ("rank_rule", "eval_min"))


def _is_noop(change: dict[str, Any], config: dict[str, Any]) -> bool:
    """A step whose every change sets a value the config already has."""
    literal = {k: v for k, v in change.items() if not _is_op(v)}
    return bool(change) and len(literal) == len(change) and all(k in config and config[k] == v for k, v in literal.items())


def ladder_for(verdict: str, config: dict[str, Any], rules: dict[str, Any], evidence: dict[str, Any] | None = None,
               adapter_path: str | None = None) -> list[dict[str, Any]]:
    """The ladder for ``verdict`` made concrete for ``config`` (r, lora_alpha, learning_rate, ...).

    Each step: action, why, config (the keys that change, when any), command (for steps that run
    another loradial verb) and sources (citations). A step with ``when: FLAG`` is kept only if
    ``evidence[FLAG]`` is true (``unless: FLAG``: only if it is not) - diagnose sets ``diverged``.
    """
    evidence = evidence or {}
    out = []
    r = config.get("r")
    for step in rules["ladder"].get(verdict, []):
        if step.get("when") and not evidence.get(step["when"]):
            continue  # e.g. 'lower the LR 10x' only for a run that diverged
        if step.get("unless") and evidence.get(step["unless"]):
            continue
        if _is_noop(step.get("change") or {}, config):
            continue  # e.g. 'target all linear layers' when they already are
        if config.get("use_dora") and "lora_dropout" in (step.get("change") or {}):
            continue  # dropout takes DoRA off PEFT's fast path (and out of the memory model)
        item: dict[str, Any] = {"action": step["action"], "why": step.get("why", "")}
        change = ladder_step_config(step, config)
        if change and change.get("steps") == "eval_min":
            if "eval_min_step" in evidence:
                change["steps"] = evidence["eval_min_step"]
            else:
                change.pop("steps")
        if change:
            item["config"] = change
        if step.get("command"):
            item["command"] = step["command"].format(
                adapter=adapter_path or "ADAPTER_DIR", model=config.get("base_model") or "BASE_MODEL_DIR", r=r or "R",
                half_r=max(1, r // 2) if isinstance(r, int) else "R/2",
                double_r=2 * r if isinstance(r, int) else "2R")
        item["sources"] = cited(step.get("sources", []))
        out.append(item)
    return out


#: Reference rank of ``--lr-rank-exponent``: lr(r) = lr · (r / R_REF)^-exponent.
R_REF = 16


def lr_for_rank(lr: float, r: int, exponent: float, r_ref: int = R_REF) -> float:
    """lr(r) = lr * (r / r_ref) ** (-exponent); exponent 0 keeps lr at every rank."""
    return lr * (r / r_ref) ** (-exponent)
