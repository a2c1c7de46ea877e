"""Advice: rules, recommendations, reading training curves, and configs for other trainers.

Owns: ``rules`` (the cited, configurable rules: rank, alpha, learning rate), ``recommendation``
(``loradial.recommend``), ``logs`` (readers of trainer logs into curves), ``diagnosis`` (curve
verdicts and ``loradial.diagnose``), ``export`` (PEFT / TRL / Axolotl / LLaMA-Factory / Unsloth /
torchtune configs).

May import: engine, adapters, cost, models, data, the basics. Never sweeps, reports, flows or cli.
"""
