"""Adapters: PEFT adapter directories read exactly, measured and changed.

Owns: ``features`` (every PEFT ``LoraConfig`` field and how each verb treats it: exact or refused),
``format`` (PEFT adapter I/O and validation), ``spectrum`` (factored SVD, metrics, rank
allocation — pure math), ``analysis`` (``loradial.analyze``), ``truncation`` (the eval-data
truncation curve), ``evaluate`` (eval loss with hooked factors; ``loradial.alpha_sweep``),
``surgery`` (``resize``, ``rescale``, ``merge``), ``full_update`` (``loradial.analyze_full``: the spectrum of a
full fine-tune's W_ft − W_base), ``extraction`` (``loradial.resize_from_full``: a LoRA adapter from that update).

May import: models, data, the basics. Never engine, cost's training parts, or anything above.
"""
