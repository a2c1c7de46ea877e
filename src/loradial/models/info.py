"""What a model is to LoRA: its targetable modules with shapes (``ModuleInfo``) and the whole
(``ModelInfo``). Pure data, no torch; everything in ``models/`` builds or reads these.

Kinds (what PEFT 0.21 wraps them with, peft/tuners/lora/layer.py):

- ``linear``    nn.Linear                       -> lora.Linear
- ``conv1d``    transformers' GPT-2 Conv1D      -> lora.Linear (fan_in_fan_out)
- ``embedding`` nn.Embedding (d_in = vocab)     -> lora.Embedding
- ``conv``      nn.Conv1d/2d/3d (d_in = in_channels * prod(kernel)) -> lora.Conv{1,2,3}d
- ``param``     a raw nn.Parameter: fused MoE experts (E, a, b) or a router weight -> lora.ParamWrapper;
                PEFT only reaches these through its transformers-v5 MoE conversion (see targets.py).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

LINEAR_KINDS = ("linear", "conv1d")
KINDS = ("linear", "conv1d", "embedding", "conv", "param")


@dataclasses.dataclass(frozen=True)
class ModuleInfo:
    """One module (or, for kind 'param', one parameter) LoRA could wrap, in PEFT's orientation.

    For an Embedding d_in = num_embeddings, d_out = embedding_dim. For kind 'param', ``experts`` is the
    number of stacked experts E of a 3-D parameter (1 for a 2-D one) and ``name`` is the parameter's
    full name (``model.layers.0.mlp.experts.gate_up_proj``).
    """

    name: str
    kind: str  # see KINDS
    d_in: int
    d_out: int
    bias: bool = False
    is_output_head: bool = False
    experts: int = 1

    @property
    def type_key(self) -> str:
        """The name with every numeric path segment replaced by '*': 'model.layers.*.self_attn.q_proj'."""
        return type_key(self.name)

    @property
    def weight_numel(self) -> int:
        """Elements of the base weight this module holds (E * d_in * d_out for experts)."""
        return self.experts * self.d_in * self.d_out


def type_key(name: str) -> str:
    return re.sub(r"(^|\.)\d+(?=\.|$)", r"\1*", name)


@dataclasses.dataclass
class ModelInfo:
    """A resolved model: its config (as a dict), where it came from, and its targetable modules.

    ``other_modules`` names every other submodule (containers, norms, activations...): PEFT refuses
    to wrap them, so a target that matches one is an error there and here. ``built_by`` says how the
    shapes were obtained: "shapes" (analytic, torch-free) or "meta" (transformers on the meta device).
    """

    name: str
    source: str  # "local" | "bundled" | "hub"
    config: dict[str, Any]
    modules: list[ModuleInfo]
    total_params: int
    tied_embeddings: bool
    other_modules: list[str] = dataclasses.field(default_factory=list)
    model_class: str = ""
    built_by: str = "meta"
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Config fields config.json leaves out, as the transformers config class fills them in (shapes.py on
    the fast path, the built config on the meta path): ``full_config()`` reads them without transformers."""

    @property
    def model_type(self) -> str:
        return self.config.get("model_type", "?")

    def full_config(self) -> dict[str, Any]:
        """config.json with the class defaults it leaves out (head_dim, num_key_value_heads, ...) filled in."""
        return {**self.defaults, **self.config}

    @property
    def linear_names(self) -> list[str]:
        """PEFT's expansion of 'all-linear': every Linear/Conv1D but the output head."""
        return [m.name for m in self.modules if m.kind in LINEAR_KINDS and not m.is_output_head]

    @property
    def num_layers(self) -> int:
        c = self.config
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(c.get(key), int):
                return c[key]
        return 0

    def summary(self) -> dict[str, Any]:
        """The JSON-friendly model description used by the verbs' results."""
        return {
            "name": self.name,
            "source": self.source,
            "model_type": self.model_type,
            "model_class": self.model_class,
            "total_params": self.total_params,
            "tied_embeddings": self.tied_embeddings,
            "num_layers": self.num_layers,
            "built_by": self.built_by,
        }
