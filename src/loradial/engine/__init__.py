"""The multi-adapter training engine: many LoRA configs trained at once on one frozen base.

``Engine`` (trainer.py) is the loop; ``layers`` and ``fused`` the multi-adapter LoRA/DoRA layers;
``loss`` the chunked output-head loss; ``flat`` the flat buffers and fused AdamW (default), ``optim`` the
earlier per-adapter AdamW; ``graphs`` the opt-in CUDA-graph step; ``batching`` the data order;
``checkpoint`` the resumable state; ``session`` a run on disk (``open_session``, ``train_many``);
``train`` the ``loradial train`` verb.

May import: adapters (to save what it trains), models, data, the basics. Never sweeps, advice,
reports, flows or cli.
"""

from loradial.engine.config import AdapterConfig, lr_factor
from loradial.engine.session import TrainResult, TrainSession, open_session, train_many
from loradial.engine.trainer import Engine

__all__ = ["AdapterConfig", "Engine", "TrainResult", "TrainSession", "lr_factor", "open_session", "train_many"]
