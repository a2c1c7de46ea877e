"""Training data: read local files, detect the prompt format, tokenize with loss masks, pack, split.

Files: ``.jsonl`` (validated line by line here, so an error names its line), ``.json`` (a list of
objects, an object holding one such list, or JSON lines under a .json name), ``.csv`` and
``.parquet`` (through ``datasets``, imported lazily), ``.txt`` (one record per non-empty line).

Formats, detected per record (first match wins):

- ``messages``: a chat, a list of ``{"role", "content"}``; token ids are exactly
  ``tokenizer.apply_chat_template(messages, tokenize=True)`` (the rendered chat tokenized once, so no
  token is split at a turn boundary); loss only on the assistant turns (see "Chat loss masks");
- ``prompt`` + ``completion``: loss only on the completion (plus EOS); both may also be message
  lists (TRL's conversational prompt/completion): then the ids are those of the whole chat, and the
  trained tokens are the assistant tokens after the longest common prefix of the prompt's ids
  (rendered with the generation prompt) and the whole chat's ids, as TRL computes them;
- ``text``: loss on every token (plus EOS).

Chat loss masks are TRL's ``SFTTrainer(assistant_only_loss=True)`` masks:

- a template with ``{% generation %}`` ... ``{% endgeneration %}`` markers: transformers'
  ``apply_chat_template(..., return_assistant_tokens_mask=True)``, the very mask TRL uses (every token
  from the one holding a marked span's first character to the one holding its last);
- a template without markers (TRL swaps in its own training template for the ones it knows and
  refuses the others): each assistant turn's span is found by rendering the chat incrementally,
  ``render(msgs[:j+1])`` minus ``render(msgs[:j], add_generation_prompt=True)``: the turn's content,
  its end-of-turn token and whatever the template writes after it before the next turn (ChatML's
  newline after ``<|im_end|>``); mapped to tokens as transformers maps generation spans. For a
  Llama-3-style template this equals TRL's mask; for Qwen2.5 TRL's training template also trains
  the newline after ``<|im_start|>assistant``, which belongs to the generation prompt here. A
  template that does not render a prefix of the chat as a prefix trains only the final assistant turn.
- a slow (Python) tokenizer has no character offsets: the rendered chat is tokenized piece by piece
  at the turn boundaries instead (ids may then differ from ``apply_chat_template``'s at a boundary).

Labels follow Hugging Face's convention: aligned with ``input_ids`` (the model shifts), ``-100``
where no loss is taken.
"""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from loradial.errors import LoradialError

IGNORE_INDEX = -100
FORMATS = ("messages", "prompt_completion", "text")
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")


# --- reading -----------------------------------------------------------------------------------
def load_records(path: str | Path) -> list[dict]:
    """Read a data file into a list of dict records; every record is checked (see ``record_format``)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise LoradialError(f"data file not found: {path}", "check the --data path")
    if path.is_dir():
        raise LoradialError(f"{path} is a directory", f"pass one data file ({', '.join(SUFFIXES)})")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        records = _read_jsonl(path)
    elif suffix == ".json":
        records = _read_json(path)
    elif suffix in (".csv", ".parquet"):
        records = _read_tabular(path, suffix[1:])
    elif suffix == ".txt":
        text = _read_text(path)
        records = [{"text": line} for line in text.splitlines() if line.strip()]
        where = [f"line {i + 1}" for i, line in enumerate(text.splitlines()) if line.strip()]
        return _checked(records, path, where)
    else:
        raise LoradialError(f"unsupported data file type {suffix or '(none)'!r}: {path.name}",
                            f"use one of {', '.join(SUFFIXES)}")
    return records


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LoradialError(f"{path} is not UTF-8 text: {e}", "re-encode the file as UTF-8") from None


def _read_jsonl(path: Path) -> list[dict]:
    records, where = [], []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise LoradialError(f"{path.name} line {lineno}: invalid JSON ({e.msg} at column {e.colno})",
                                "each line of a .jsonl file must be one JSON object") from None
        if not isinstance(obj, dict):
            raise LoradialError(f"{path.name} line {lineno}: expected a JSON object, got {type(obj).__name__}",
                                "each line of a .jsonl file must be one JSON object")
        records.append(obj)
        where.append(f"line {lineno}")
    return _checked(records, path, where)


def _read_json(path: Path) -> list[dict]:
    text = _read_text(path)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # JSON lines under a .json name
            return _read_jsonl(path)
        raise LoradialError(f"{path.name}: invalid JSON ({e.msg} at line {e.lineno} column {e.colno})",
                            "a .json data file holds a list of objects") from None
    if isinstance(obj, dict):
        lists = [v for v in obj.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise LoradialError(f"{path.name}: a JSON object must hold exactly one list of records",
                                "use a top-level list of objects, or JSON lines")
        obj = lists[0]
    if not isinstance(obj, list):
        raise LoradialError(f"{path.name}: expected a list of objects, got {type(obj).__name__}",
                            "use a top-level list of objects, or JSON lines")
    for i, rec in enumerate(obj):
        if not isinstance(rec, dict):
            raise LoradialError(f"{path.name} record {i}: expected an object, got {type(rec).__name__}", "records are objects with 'text', 'prompt'+'completion' or 'messages' (role, content)")
    return _checked(obj, path, [f"record {i}" for i in range(len(obj))])


def _read_tabular(path: Path, kind: str) -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise LoradialError(f"reading .{kind} files needs the `datasets` package", "pip install 'loradial[train]'") from None
    datasets.disable_progress_bars()
    try:
        ds = datasets.Dataset.from_csv(str(path)) if kind == "csv" else datasets.Dataset.from_parquet(str(path))
    except Exception as e:  # malformed file: the user's to fix
        raise LoradialError(f"could not read {path.name}: {str(e).splitlines()[0][:200]}", f"check the .{kind} file") from None
    records = [dict(r) for r in ds]
    offset = 2 if kind == "csv" else 0  # csv: header is line 1
    where = [f"line {i + offset}" if kind == "csv" else f"row {i}" for i in range(len(records))]
    return _checked(records, path, where)


def _checked(records: list[dict], path: Path, where: Sequence[str]) -> list[dict]:
    if not records:
        raise LoradialError(f"{path.name} holds no records", "the data file is empty")
    for rec, loc in zip(records, where):
        record_format(rec, f"{path.name} {loc}")
    check_not_all_empty(records, path.name)
    return records


def _content(rec: dict) -> str:
    """The text a record trains on: its text, its completion, or its assistant messages."""
    fmt = record_format(rec)
    if fmt == "text":
        return rec["text"]
    if fmt == "prompt_completion":
        c = rec["completion"]
        return c if isinstance(c, str) else " ".join(str(m.get("content") or "") for m in c)
    return " ".join(str(m.get("content") or "") for m in rec["messages"] if m.get("role") == "assistant")


def check_not_all_empty(records: Sequence[dict], what: str = "the data") -> None:
    """Refuse data whose every record has nothing to learn (empty or blank text / completion / answers):
    training on it would fit BOS/EOS tokens alone."""
    if records and not any(_content(r).strip() for r in records):
        raise LoradialError(f"{what}: all {len(records):,} records have empty text (nothing to train or evaluate on)",
                            "check the file's field names and content ('text', 'prompt'+'completion' or 'messages')")


# --- formats -----------------------------------------------------------------------------------
def _present(rec: dict, key: str) -> bool:
    v = rec.get(key)
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _check_messages(msgs: Any, where: str, field: str) -> None:
    if not isinstance(msgs, list) or not msgs:
        raise LoradialError(f"{where}: {field!r} must be a non-empty list of messages",
                            "each message is an object with 'role' and 'content'")
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise LoradialError(f"{where}: {field}[{j}] must be an object with 'role' and 'content'",
                                "e.g. {\"role\": \"user\", \"content\": \"...\"}")


def record_format(rec: dict, where: str = "record") -> str:
    """'messages', 'prompt_completion' or 'text'; a LoradialError naming ``where`` if none fits."""
    if _present(rec, "messages"):
        _check_messages(rec["messages"], where, "messages")
        if not any(m["role"] == "assistant" for m in rec["messages"]):
            raise LoradialError(f"{where}: the chat has no assistant message to learn from",
                                "loradial trains on the assistant turns: add one, or drop the record")
        return "messages"
    if _present(rec, "prompt") or _present(rec, "completion"):
        for key in ("prompt", "completion"):
            if not _present(rec, key):
                raise LoradialError(f"{where}: has {'prompt' if key == 'completion' else 'completion'} but no {key!r}",
                                    "prompt/completion records need both fields")
        p, c = rec["prompt"], rec["completion"]
        if isinstance(p, list) or isinstance(c, list):
            _check_messages(p, where, "prompt")
            _check_messages(c, where, "completion")
        elif not isinstance(p, str) or not isinstance(c, str):
            raise LoradialError(f"{where}: 'prompt' and 'completion' must be strings (or message lists)", "records are objects with 'text', 'prompt'+'completion' or 'messages' (role, content)")
        return "prompt_completion"
    if _present(rec, "text"):
        if not isinstance(rec["text"], str):
            raise LoradialError(f"{where}: 'text' must be a string, got {type(rec['text']).__name__}", "records are objects with 'text', 'prompt'+'completion' or 'messages' (role, content)")
        return "text"
    fields = ", ".join(sorted(map(str, rec))) or "none"
    raise LoradialError(f"{where}: no 'text', 'prompt'+'completion' or 'messages' field (fields: {fields})",
                        "rename your columns to one of the supported formats")


# --- tokenization ------------------------------------------------------------------------------
def _ids(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _eos(tokenizer) -> list[int]:
    eos = getattr(tokenizer, "eos_token_id", None)
    return [] if eos is None else [int(eos)]


def _render(tokenizer, msgs: list[dict], generation_prompt: bool = False) -> str:
    if not msgs:
        return ""
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt)


_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")


def has_generation_markers(template: str | dict | None) -> bool:
    """Whether a chat template marks assistant output with ``{% generation %}`` (TRL's test, trim variants
    included; for a template shipped as named variants, the ``default`` one)."""
    if isinstance(template, dict):
        template = template.get("default")
    return bool(template) and _GENERATION.search(template) is not None


def _check_template(tokenizer) -> None:
    if getattr(tokenizer, "chat_template", None) is None:
        raise LoradialError("the tokenizer has no chat template, so 'messages' data cannot be rendered",
                            "use a chat model's tokenizer, or prompt/completion or text data")


def _chat_encode(tokenizer, msgs: list[dict], **kw):
    return tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True, **kw)


def _span_mask(enc, spans: list[tuple[int, int]], n: int) -> list[int]:
    """1 on every token from the one holding a span's first character to the one holding its last
    (transformers' mapping of generation spans); characters no token holds (whitespace a pre-tokenizer
    dropped) are skipped inward from both ends."""
    mask = [0] * n
    for start, end in spans:
        first = next((t for c in range(start, end) if (t := enc.char_to_token(c)) is not None), None)
        last = next((t for c in range(end - 1, start - 1, -1) if (t := enc.char_to_token(c)) is not None), None)
        if first is not None and last is not None:
            mask[first:last + 1] = [1] * (last + 1 - first)
    return mask


def chat_token_mask(tokenizer, msgs: list[dict], train_from: int = 0) -> tuple[list[int], list[int]]:
    """(input_ids, mask) of a chat: ids are ``apply_chat_template(msgs, tokenize=True)``'s, mask 1 on the
    trained assistant tokens (see the module docstring); with ``train_from`` (a conversational prompt of
    that many messages) only tokens after the common prefix with the prompt's ids (TRL's completion mask)."""
    _check_template(tokenizer)
    if not getattr(tokenizer, "is_fast", False):
        ids, mask = [], []
        for text, trained in chat_segments(tokenizer, msgs, train_from):
            seg = _ids(tokenizer, text, False)
            ids += seg
            mask += [int(trained)] * len(seg)
        return ids, mask
    if has_generation_markers(tokenizer.chat_template):
        enc = _chat_encode(tokenizer, msgs, return_assistant_tokens_mask=True)
        ids, mask = list(enc["input_ids"]), list(enc["assistant_masks"])
    else:
        text = _render(tokenizer, msgs)
        enc = tokenizer(text, add_special_tokens=False)  # what apply_chat_template(tokenize=True) runs
        ids = list(enc["input_ids"])
        mask = _span_mask(enc, _assistant_spans(tokenizer, msgs, text), len(ids))
    if train_from:
        prompt = list(_chat_encode(tokenizer, msgs[:train_from], add_generation_prompt=True)["input_ids"])
        n = next((i for i, (a, b) in enumerate(zip(prompt, ids)) if a != b), min(len(prompt), len(ids)))
        mask = [0] * n + mask[n:]
    return ids, mask


def _assistant_spans(tokenizer, msgs: list[dict], full: str) -> list[tuple[int, int]]:
    """Character spans of the assistant turns in ``full`` (the rendered chat), by incremental rendering."""
    spans: list[tuple[int, int]] = []
    pos = 0
    for text, trained in chat_segments(tokenizer, msgs):
        if trained:
            spans.append((pos, pos + len(text)))
        pos += len(text)
    return spans


def chat_segments(tokenizer, msgs: list[dict], train_from: int = 0) -> list[tuple[str, bool]]:
    """Split the rendered chat into (text, trained) pieces: assistant turns at index >= train_from are trained.

    A turn's span is ``render(msgs[:j+1])`` minus ``render(msgs[:j], add_generation_prompt=True)``.
    When the template is not incremental (a prefix does not render as a prefix), only the final
    assistant turn is trained.
    """
    _check_template(tokenizer)
    full = _render(tokenizer, msgs)
    pieces: list[tuple[str, bool]] = []
    done = 0
    for j, m in enumerate(msgs):
        if m["role"] != "assistant" or j < train_from:
            continue
        start = _render(tokenizer, msgs[:j], generation_prompt=True)
        end = _render(tokenizer, msgs[: j + 1])
        if not (full.startswith(end) and end.startswith(start) and len(start) >= done):
            return _last_turn_segments(tokenizer, msgs, full)
        pieces += [(full[done:len(start)], False), (full[len(start):len(end)], True)]
        done = len(end)
    pieces.append((full[done:], False))
    return [(t, trained) for t, trained in pieces if t]


def _last_turn_segments(tokenizer, msgs: list[dict], full: str) -> list[tuple[str, bool]]:
    if msgs[-1]["role"] != "assistant":
        raise LoradialError("this chat template does not render conversations incrementally",
                            "end each conversation with the assistant turn to learn")
    prompt = _render(tokenizer, msgs[:-1], generation_prompt=True)
    if not full.startswith(prompt):
        raise LoradialError("this chat template does not render conversations incrementally",
                            "use prompt/completion data")
    return [(t, trained) for t, trained in ((prompt, False), (full[len(prompt):], True)) if t]


def tokenize_record(rec: dict, tokenizer, where: str = "record") -> dict[str, list[int]]:
    """One record -> {input_ids, labels} (untruncated); labels -100 on prompt tokens."""
    fmt = record_format(rec, where)
    if fmt == "text":
        ids = _ids(tokenizer, rec["text"], True)
        eos = _eos(tokenizer)
        if eos and (not ids or ids[-1] != eos[0]):
            ids += eos
        return {"input_ids": ids, "labels": list(ids)}
    if fmt == "prompt_completion" and isinstance(rec["prompt"], str):
        p = _ids(tokenizer, rec["prompt"], True)
        c = _ids(tokenizer, rec["completion"], False) + _eos(tokenizer)
        return {"input_ids": p + c, "labels": [IGNORE_INDEX] * len(p) + c}
    if fmt == "prompt_completion":
        msgs, train_from = list(rec["prompt"]) + list(rec["completion"]), len(rec["prompt"])
    else:
        msgs, train_from = rec["messages"], 0
    ids, mask = chat_token_mask(tokenizer, msgs, train_from)
    return {"input_ids": ids, "labels": [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]}


def _trainable(ex: dict) -> bool:
    """At least one label a model can predict (labels at position 0 are never predicted)."""
    return any(lab != IGNORE_INDEX for lab in ex["labels"][1:])


def tokenize_records(records: Iterable[dict], tokenizer, max_len: int, packing: bool = False) -> list[dict]:
    """Records -> [{input_ids, labels}], truncated to ``max_len`` (or packed into blocks of ``max_len``).

    Examples left with no label token after truncation are dropped; an error if none is left.
    Packing concatenates whole examples (each ends in EOS) and cuts blocks of exactly ``max_len``
    tokens (the last block may be shorter); loss masks travel with the tokens.
    """
    if not isinstance(max_len, int) or max_len < 2:
        raise LoradialError(f"max_len must be an integer >= 2, got {max_len!r}", "use e.g. --max-len 1024")
    records = list(records)
    examples = [tokenize_record(rec, tokenizer, f"record {i}") for i, rec in enumerate(records)]
    if not examples:
        raise LoradialError("no records to tokenize", "the data is empty")
    check_not_all_empty(records)
    if packing:
        ids = [t for ex in examples for t in ex["input_ids"]]
        labels = [t for ex in examples for t in ex["labels"]]
        out = [{"input_ids": ids[i:i + max_len], "labels": labels[i:i + max_len]} for i in range(0, len(ids), max_len)]
    else:
        out = [{"input_ids": ex["input_ids"][:max_len], "labels": ex["labels"][:max_len]} for ex in examples]
    out = [ex for ex in out if _trainable(ex)]
    if not out:
        raise LoradialError(f"no example keeps a completion token within max_len={max_len}",
                            "raise --max-len or shorten the prompts")
    return out


def load_dataset(path, tokenizer, max_len: int, eval_data=None, eval_fraction: float = 0.0,
                 packing: bool = False, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, eval) tokenized examples. Eval from ``eval_data`` or a seeded held-out record fraction.

    ``path``/``eval_data`` may be a file path or an already loaded list of records. The split is made on
    records before tokenization (packing never mixes train and eval text); both keep file order.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise LoradialError(f"eval fraction must be in [0, 1), got {eval_fraction}", "use e.g. --eval-fraction 0.1")
    if eval_data is not None and eval_fraction > 0:
        raise LoradialError("give either eval data or an eval fraction, not both", "drop --eval-fraction or --eval-data")
    records = path if isinstance(path, list) else load_records(path)
    eval_records: list[dict] = []
    if eval_data is not None:
        eval_records = eval_data if isinstance(eval_data, list) else load_records(eval_data)
    elif eval_fraction > 0:
        n_eval = max(1, round(eval_fraction * len(records)))
        if n_eval >= len(records):
            raise LoradialError(f"{len(records)} records are too few to hold out {eval_fraction:.0%}",
                                "lower --eval-fraction or add data")
        held = set(random.Random(seed).sample(range(len(records)), n_eval))
        eval_records = [r for i, r in enumerate(records) if i in held]
        records = [r for i, r in enumerate(records) if i not in held]
    train = tokenize_records(records, tokenizer, max_len, packing)
    ev = tokenize_records(eval_records, tokenizer, max_len, packing) if eval_records else []
    return train, ev


# --- batching ----------------------------------------------------------------------------------
def collate(examples: Sequence[dict], pad_token_id: int | None, pad_to_multiple_of: int | None = None) -> dict:
    """Right-pad to the longest example: LongTensors input_ids, attention_mask, labels (-100 on padding)."""
    import torch

    if not examples:
        raise LoradialError("cannot collate an empty batch")
    pad = 0 if pad_token_id is None else int(pad_token_id)
    T = max(len(ex["input_ids"]) for ex in examples)
    if pad_to_multiple_of:
        T = -(-T // pad_to_multiple_of) * pad_to_multiple_of
    n = len(examples)
    input_ids = torch.full((n, T), pad, dtype=torch.long)
    attention_mask = torch.zeros((n, T), dtype=torch.long)
    labels = torch.full((n, T), IGNORE_INDEX, dtype=torch.long)
    for i, ex in enumerate(examples):
        L = len(ex["input_ids"])
        input_ids[i, :L] = torch.tensor(ex["input_ids"], dtype=torch.long)
        attention_mask[i, :L] = 1
        labels[i, :L] = torch.tensor(ex.get("labels", ex["input_ids"]), dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
