"""Cost: exact trainable parameters, adapter bytes, FLOPs and the training-memory model; the ``plan`` verb.

Owns: ``params`` (counts, bytes, FLOPs), ``memory`` (static pieces, transients and the peak),
``activations`` (what the forward saves for backward), ``engine_memory`` (the multi-adapter engine's
peak, for the sweep's packer), ``planning`` (``loradial.plan``).
Pure arithmetic on shapes: no training code, no weights.

May import: models, the basics. Never engine, adapters or anything above.
"""
