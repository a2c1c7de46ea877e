"""Sweeps: many configs trained at once on one frozen base, packed by memory, halved, resumable.

Owns: ``api`` (``loradial.sweep``), ``setup`` (flags → a validated SweepSettings and the run's
context), ``grid`` (configs and their names), ``pack`` (packing by memory), ``halving`` (rungs and
survivors), ``state`` (the sweep directory, lock and state file), ``runner`` (the driver loop),
``segment`` (one pack trained for one rung on the engine), ``full_pack`` / ``full_segment`` (the ``full``
variant: full fine-tuning as its own pack, the reference), ``executor`` / ``ray_exec`` (local
devices and Ray), ``results`` (results.json with verdicts).

May import: advice, engine, adapters, cost, models, data, the basics. Never reports, flows or cli.
"""
