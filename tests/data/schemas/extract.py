"""Regenerate the trainers' config field lists in this folder from the real packages.

The export tests check every key loradial writes against these lists (CI cannot install axolotl,
LLaMA-Factory, torchtune or Unsloth beside this HF stack: each pins other transformers/peft/trl
versions or needs a GPU at import). Where a tool imports, tests/test_export_schemas.py also runs its
own parser. Each list names the release, the source file and that file's sha256 from the wheel's
RECORD, so a reader can check it against the tool's repository at that release.

Usage (each tool unpacked with ``pip install --no-deps --target DIR``; Unsloth's wheel only unzipped,
it is read with ``ast``, never imported):

    PYTHONPATH=$AXOLOTL:$LLAMAFACTORY:$TORCHTUNE DISABLE_VERSION_CHECK=1 \\
        python tests/data/schemas/extract.py --unsloth-src $UNSLOTH_UNZIPPED
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
from pathlib import Path

HERE = Path(__file__).parent


def _record_hash(dist_info: Path, file: str) -> str:
    for line in (dist_info / "RECORD").read_text().splitlines():
        name, digest, _ = line.rsplit(",", 2)
        if name == file:
            return digest
    raise KeyError(file)


def _dist_info(module, name: str) -> Path:
    root = Path(module.__file__).parents[1]
    return next(root.glob(f"{name}-*.dist-info"))


def _source(name: str, version: str, repo: str) -> str:
    return f"the PyPI release https://pypi.org/project/{name}/{version}/ (repository {repo}); file hashes from its RECORD"


def _write(name: str, doc: dict) -> None:
    (HERE / f"{name}.json").write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")


def axolotl() -> None:
    import axolotl as pkg
    from axolotl.utils.schemas.config import AxolotlInputConfig

    info = _dist_info(pkg, "axolotl")
    fields = {n: str(f.annotation).replace("typing.", "") for n, f in AxolotlInputConfig.model_fields.items()}
    _write("axolotl", {
        "tool": "axolotl", "version": pkg.__version__, "parser": "axolotl.utils.schemas.config.AxolotlInputConfig",
        "source": _source("axolotl", pkg.__version__, "https://github.com/axolotl-ai-cloud/axolotl"),
        "files": {f: _record_hash(info, f) for f in ("axolotl/utils/schemas/config.py", "axolotl/utils/schemas/peft.py")},
        "fields": fields})


def llamafactory() -> None:
    import llamafactory as pkg
    from llamafactory.hparams.parser import _TRAIN_ARGS

    info = _dist_info(pkg, "llamafactory")
    fields = {}
    for cls in _TRAIN_ARGS:
        for f in dataclasses.fields(cls):
            if f.init:
                fields[f.name] = str(f.type).replace("typing.", "")
    _write("llamafactory", {
        "tool": "llamafactory", "version": pkg.__version__,
        "parser": "llamafactory.hparams.parser._parse_train_args (HfArgumentParser over "
                  + ", ".join(c.__name__ for c in _TRAIN_ARGS) + ")",
        "source": _source("llamafactory", pkg.__version__, "https://github.com/hiyouga/LLaMA-Factory"),
        "files": {f"llamafactory/hparams/{n}.py": _record_hash(info, f"llamafactory/hparams/{n}.py")
                  for n in ("parser", "model_args", "data_args", "training_args", "finetuning_args", "generating_args")},
        "fields": fields})


def torchtune() -> None:
    import torch
    import torchtune as pkg
    import yaml
    from torchtune.models.llama3_2 import lora_llama3_2_1b
    from torchtune.training.lr_schedulers import get_cosine_schedule_with_warmup

    info = _dist_info(pkg, "torchtune")
    recipe = "recipes/configs/llama3_2/1B_lora_single_device.yaml"
    cfg = yaml.safe_load((Path(pkg.__file__).parents[1] / recipe).read_text())
    version = pkg.__version__.split("+")[0]
    _write("torchtune", {
        "tool": "torchtune", "version": version,
        "parser": "torchtune.config.validate on the recipe config with loradial's keys merged in",
        "source": _source("torchtune", version, "https://github.com/pytorch/torchtune"),
        "files": {f: _record_hash(info, f) for f in (recipe, "torchtune/models/llama3_2/_model_builders.py")},
        "recipe_keys": sorted(cfg),
        "model": sorted(inspect.signature(lora_llama3_2_1b).parameters),
        "optimizer": sorted(inspect.signature(torch.optim.AdamW).parameters),
        "lr_scheduler": sorted(p for p in inspect.signature(get_cosine_schedule_with_warmup).parameters if p != "optimizer"),
    })


def _signature(path: Path, cls: str, fn: str) -> dict:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name == fn:
                    a = item.args
                    names = [x.arg for x in a.args + a.kwonlyargs if x.arg not in ("self", "cls", "model")]
                    pos = [x.arg for x in a.args]
                    defaults = dict(zip(pos[len(pos) - len(a.defaults):], (ast.unparse(d) for d in a.defaults)))
                    defaults.update({x.arg: ast.unparse(d) for x, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None})
                    return {"line": item.lineno, "parameters": {n: defaults.get(n) for n in names}}
    raise KeyError(f"{cls}.{fn}")


def unsloth(src: Path) -> None:
    dist = next(src.glob("unsloth-*.dist-info"))
    version = dist.name.removesuffix(".dist-info").split("-", 1)[1]
    files = ("unsloth/models/loader.py", "unsloth/models/llama.py")
    _write("unsloth", {
        "tool": "unsloth", "version": version,
        "parser": "none importable without a GPU: signatures read from the wheel's source with ast",
        "source": _source("unsloth", version, "https://github.com/unslothai/unsloth"),
        "files": {f: _record_hash(dist, f) for f in files},
        "from_pretrained": _signature(src / files[0], "FastLanguageModel", "from_pretrained"),
        "get_peft_model": _signature(src / files[1], "FastLlamaModel", "get_peft_model"),
    })


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--unsloth-src", type=Path)
    ap.add_argument("--only", nargs="*", default=["axolotl", "llamafactory", "torchtune", "unsloth"])
    a = ap.parse_args()
    for tool in a.only:
        if tool == "unsloth":
            if a.unsloth_src:
                unsloth(a.unsloth_src)
        else:
            globals()[tool]()
        print("wrote", tool)
