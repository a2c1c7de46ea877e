"""Models: what a model is to LoRA, without its weights — and, when it must, the one loader of weights.

Owns: ``info`` (ModelInfo / ModuleInfo), ``resolve`` (``--model`` → config: local dir, bundled
name, Hub id; meta-device build; ``loradial models``), ``shapes`` (torch-free module shapes of the
bundled families), ``targets`` (PEFT's target matching, presets, MoE conversion), ``load`` (the one
``from_pretrained`` path: dtype, 4-bit, remote-code policy), ``configs/`` (published config.json files).

May import: the basics (errors, result, io, console, spec, settings). Never anything above.
"""
