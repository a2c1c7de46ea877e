"""Flows: verbs that chain other verbs — ``demo`` and ``tune``. No math of their own.

May import: sweeps, reports, advice, engine, adapters, cost, models, data, the basics. Never cli.
"""
