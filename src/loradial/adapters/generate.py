"""Task metrics by greedy decoding: exact match of the completion, for prompt/completion and chat data.

For each eval record the prompt is what the model sees before the answer — a prompt/completion
record's prompt (tokenized as training tokenizes it, with the tokenizer's special tokens), or a chat
record's turns up to its last assistant turn rendered by the chat template with the generation
prompt — and the answer is the completion (or that last assistant turn). The base model with the
adapter applied (``AdapterHooks``, scale 1) decodes greedily, batched with left padding, up to
``max_new_tokens`` or EOS; a record scores 1 when the decoded text, stripped of whitespace and special
tokens, equals the answer stripped. Text-only records have no answer: they are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from loradial.errors import LoradialError
from loradial.settings import MAX_NEW_TOKENS


def prompts_and_answers(records: list[dict], tokenizer) -> list[tuple[list[int], str]]:
    """(prompt token ids, reference answer) per record; a text-only record is a LoradialError."""
    from loradial.data import record_format

    out = []
    for i, rec in enumerate(records):
        fmt = record_format(rec, f"eval record {i + 1}")
        if fmt == "prompt_completion" and isinstance(rec["prompt"], str):
            ids = list(tokenizer(rec["prompt"], add_special_tokens=True)["input_ids"])
            out.append((ids, rec["completion"]))
            continue
        if fmt == "text":
            raise LoradialError("exact match needs an answer per eval record, but the eval data is plain text",
                                "use prompt+completion or chat (messages) eval data, or rank by eval loss")
        msgs = list(rec["prompt"]) + list(rec["completion"]) if fmt == "prompt_completion" else list(rec["messages"])
        last = max(j for j, m in enumerate(msgs) if m.get("role") == "assistant")
        if getattr(tokenizer, "chat_template", None) is None:
            raise LoradialError("exact match on chat records needs the tokenizer's chat template",
                                "use a chat model's tokenizer, or prompt/completion eval data")
        text = tokenizer.apply_chat_template(msgs[:last], tokenize=False, add_generation_prompt=True)
        out.append((list(tokenizer(text, add_special_tokens=False)["input_ids"]), msgs[last]["content"]))
    return out


def exact_match(model, tokenizer, pairs: list[tuple[list[int], str]], max_new_tokens: int = MAX_NEW_TOKENS,
                batch_size: int = 8) -> float:
    """Share of ``pairs`` whose greedy continuation equals the answer (both stripped)."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    hits = 0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p, _ in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p, _ in chunk], device=device)
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        for row, (_, answer) in zip(gen[:, width:], chunk):
            hits += tokenizer.decode(row, skip_special_tokens=True).strip() == str(answer).strip()
    return hits / len(pairs) if pairs else float("nan")


def exact_match_of_adapters(model: str | Path, data: str | Path, adapters: Mapping[str, str | Path], *,
                            max_new_tokens: int = MAX_NEW_TOKENS, batch_size: int = 8, max_examples: int | None = None,
                            device: str | None = None, trust_remote_code: bool = False) -> dict[str, float]:
    """name -> exact match of each adapter on ``data``, with one load of the base model."""
    from loradial.adapters.evaluate import AdapterHooks
    from loradial.adapters.format import load_adapter
    from loradial.data import load_records
    from loradial.models.load import load_model

    if not (isinstance(max_new_tokens, int) and max_new_tokens > 0):
        raise LoradialError(f"--max-new-tokens must be a positive integer, got {max_new_tokens!r}", "e.g. --max-new-tokens 64")
    base, tok = load_model(model, dtype="stored", device=device, trust_remote_code=trust_remote_code,
                           local_only=True, frozen=True)
    records = load_records(data)[:max_examples]
    pairs = prompts_and_answers(records, tok)
    out: dict[str, Any] = {}
    for name, path in adapters.items():
        with AdapterHooks(base, load_adapter(path)):
            out[name] = exact_match(base, tok, pairs, max_new_tokens, batch_size)
    return out
