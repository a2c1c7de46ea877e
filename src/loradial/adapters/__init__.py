"""Adapters: PEFT adapter directories read exactly, measured and changed.

Owns: ``features`` (every PEFT ``LoraConfig`` field and how each verb treats it: exact or refused),
``format`` (PEFT adapter I/O and validation), ``spectrum`` (factored SVD, metrics, rank
allocation — pure math), ``analysis`` (``loradial.analyze``), ``truncation`` (the eval-data
truncation curve), ``evaluate`` (eval loss with hooked factors; ``loradial.alpha_sweep``),
``surgery`` (``resize``, ``rescale``, ``merge``).

May import: models, data, the basics. Never engine, cost's training parts, or anything above.
"""
