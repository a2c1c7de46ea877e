"""Every option more than one verb takes, declared once (typer ``Annotated`` aliases) with one help text.

Training options take their help and their default from ``loradial.settings.TrainSettings`` (the
field's docstring and value): a verb writes ``batch_size: BatchSize = DEFAULT.batch_size``.
Options whose meaning differs between verbs have one alias per meaning (``ModelDir``: a local model
with weights; ``ModelConfig``: anything with a config.json; ``EvalBatchSize`` vs ``BatchSize``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from loradial.settings import EvalSettings, SweepSettings, TrainSettings


def _train(field: str, *names: str, **kw) -> typer.models.OptionInfo:
    """An option whose help is TrainSettings' docstring of ``field``."""
    help_text = (TrainSettings.model_fields[field].description or "").replace("``", "")
    return typer.Option(*(names or ("--" + field.replace("_", "-"),)), help=help_text, **kw)


# --- inputs -----------------------------------------------------------------------------------------
ModelDir = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="Base model: a local directory with weights (safetensors) and tokenizer.")]
ModelAny = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="Base model: a local directory with weights and tokenizer, or a Hub id.")]
ModelConfig = Annotated[str, typer.Option(
    "--model", "-m", help="Model shape: a bundled name (`loradial models`), a Hub id, or a local directory with config.json.")]
Data = Annotated[Optional[str], typer.Option(
    "--data", "-d", help="Training data: .jsonl/.json/.csv/.parquet/.txt with text, prompt+completion or chat messages.")]
EvalData = Annotated[Optional[str], typer.Option(
    "--eval-data", help="Eval data file (same formats as --data).")]
EvalFraction = Annotated[float, typer.Option(
    "--eval-fraction", help="Hold out this fraction of --data for eval when --eval-data is not given.")]
AdapterArg = Annotated[Path, typer.Argument(
    help="PEFT adapter: a local directory (adapter_config.json + adapter_model.safetensors) or a Hub id (owner/name).")]
AllowPickle = Annotated[bool, typer.Option(
    "--allow-pickle", help="Read adapter_model.bin (torch.load(weights_only=True)).")]
TrustRemoteCode = Annotated[bool, _train("trust_remote_code")]

# --- outputs ----------------------------------------------------------------------------------------
OutDir = Annotated[Optional[str], typer.Option("--out", "-o", help="Output directory (written atomically).")]
OutFile = Annotated[Optional[Path], typer.Option("--out", "-o", help="Write to this file (default: print it).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --out.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout (with schema_version).")]

# --- training (help and default from TrainSettings) ---------------------------------------------------
Lr = Annotated[float, _train("lr")]
BatchSize = Annotated[int, _train("batch_size")]
GradAccum = Annotated[int, _train("grad_accum")]
MaxLen = Annotated[int, _train("max_len")]
Packing = Annotated[bool, _train("packing")]
Dropout = Annotated[float, _train("dropout")]
Schedule = Annotated[str, _train("schedule")]
WarmupRatio = Annotated[float, _train("warmup_ratio")]
WeightDecay = Annotated[float, _train("weight_decay")]
MaxGradNorm = Annotated[float, typer.Option("--max-grad-norm", help="Clip each adapter's gradient norm to this (0 = off).")]
GradientCheckpointing = Annotated[bool, _train("gradient_checkpointing")]
Dtype = Annotated[str, _train("dtype")]
LoadIn4bit = Annotated[bool, _train("load_in_4bit")]
CudaGraphs = Annotated[bool, _train("cuda_graphs")]
Seed = Annotated[int, _train("seed")]
Steps = Annotated[Optional[int], typer.Option("--steps", help="Optimizer steps per config (or --epochs).")]
Epochs = Annotated[Optional[float], typer.Option("--epochs", help="Passes over the training data (or --steps).")]
Metric = Annotated[str, typer.Option("--metric", help="What picks the best config: eval_loss, or exact_match (greedy decoding of the eval completions; prompt/completion or chat eval data).")]
MaxNewTokens = Annotated[int, typer.Option("--max-new-tokens", help="Greedy decoding limit of --metric exact_match.")]
GpuMemory = Annotated[Optional[float], typer.Option(
    "--gpu-memory", help="GiB per device the packer may plan for (default: the free memory x --memory-fraction).")]
MemoryFraction = Annotated[float, typer.Option(
    "--memory-fraction", help=(SweepSettings.model_fields["memory_fraction"].description or "").replace("``", ""))]
EvalEvery = Annotated[Optional[int], typer.Option("--eval-every", help="Evaluate every N steps (and always at the end).")]

# --- evaluation of an adapter against its base (alpha-sweep, analyze --data) -----------------------------
EvalMaxLen = Annotated[int, typer.Option("--max-len", help=EvalSettings.model_fields["max_len"].description)]
EvalBatchSize = Annotated[int, typer.Option("--batch-size", help=EvalSettings.model_fields["batch_size"].description)]
MaxExamples = Annotated[Optional[int], typer.Option("--max-examples", help="Use only the first N eval records.")]
