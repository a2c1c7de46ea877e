"""Chat tokenization is apply_chat_template's, and the loss mask is TRL's assistant_only_loss mask.

Two real templates (Qwen2.5's ChatML and Llama 3, tests/data/chat_templates/, from TRL), each as shipped
(no generation markers: loradial's incremental-rendering fallback) and as TRL's training variant (with
``{% generation %}``), on a byte-level BPE tokenizer trained here, so that merges can cross turn
boundaries as in real tokenizers. The reference is TRL's own SFTTrainer dataset preparation.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from loradial.data import IGNORE_INDEX, has_generation_markers, tokenize_record

TEMPLATES = Path(__file__).parent / "data" / "chat_templates"
STYLES = {
    "chatml": dict(specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], bos=None, eos="<|im_end|>", pad="<|endoftext|>",
                   file="qwen2_5"),
    "llama3": dict(specials=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
                   bos="<|begin_of_text|>", eos="<|eot_id|>", pad="<|end_of_text|>", file="llama3"),
}
WORDS = ("the a cat dog sat on mat ran to park red blue green what is color sky sun yes no hello hi how are you fine "
         "thanks answer question tell me about it was very good day night tree house 1 2 3 42 , . ? ! : ( ) def return "
         "x = y + system user assistant").split()


def _text(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(1, 9))]
    s = " ".join(words)
    if rng.random() < 0.3:
        s = s.replace(" ", "\n", 1)
    if rng.random() < 0.2:
        s = " " + s  # leading / trailing whitespace: where segment-wise tokenization went wrong
    if rng.random() < 0.2:
        s = s + "\n"
    return s


def chats(n: int = 24, seed: int = 0) -> list[list[dict]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        msgs = [{"role": "system", "content": _text(rng)}] if rng.random() < 0.5 else []
        for _ in range(rng.randint(1, 3)):
            msgs += [{"role": "user", "content": _text(rng)}, {"role": "assistant", "content": _text(rng)}]
        out.append(msgs)
    return out


def bpe_tokenizer(style: str, training: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    st = STYLES[style]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [m["content"] + "\n\n" + m["role"] for c in chats(200, seed=1) for m in c]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=600, special_tokens=st["specials"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=st["bos"], eos_token=st["eos"], pad_token=st["pad"],
                                   additional_special_tokens=[t for t in st["specials"] if t not in (st["bos"], st["eos"], st["pad"])])
    fast.chat_template = (TEMPLATES / f"{st['file']}{'_training' if training else ''}.jinja").read_text()
    return fast


CASES = [(s, t) for s in STYLES for t in (False, True)]


@pytest.mark.parametrize("style,training", CASES)
def test_token_ids_equal_apply_chat_template(style, training):
    tok = bpe_tokenizer(style, training)
    assert has_generation_markers(tok.chat_template) is training
    for msgs in chats():
        ex = tokenize_record({"messages": msgs}, tok)
        assert ex["input_ids"] == list(tok.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"])


def test_segment_wise_tokenization_would_differ():
    """The records do exercise the turn boundaries: tokenizing the pieces separately changes ids."""
    from loradial.data import chat_segments

    tok = bpe_tokenizer("llama3", False)
    differ = 0
    for msgs in chats():
        pieces = [t for text, _ in chat_segments(tok, msgs) for t in tok(text, add_special_tokens=False)["input_ids"]]
        differ += pieces != tokenize_record({"messages": msgs}, tok)["input_ids"]
    assert differ >= 5


def _trl_prepared(tok, records, tmp_path):
    """TRL's own preparation: SFTTrainer(assistant_only_loss=True) on a tiny model; its train_dataset."""
    import datasets
    import trl
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("llama", hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                               num_key_value_heads=1, vocab_size=len(tok), max_position_embeddings=512)
    model = AutoModelForCausalLM.from_config(cfg)
    args = trl.SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, max_length=None, report_to=[],
                         bf16=False, use_cpu=True, dataset_num_proc=None)
    datasets.disable_progress_bars()
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(records), processing_class=tok)
    return trainer.train_dataset


def _ours(tok, records):
    return [tokenize_record(r, tok) for r in records]


@pytest.mark.parametrize("style", STYLES)
def test_masks_equal_trl_assistant_only_loss_with_generation_markers(style, tmp_path):
    tok = bpe_tokenizer(style, training=True)
    records = [{"messages": m} for m in chats()]
    trl_ds = _trl_prepared(tok, records, tmp_path)
    for ours, row in zip(_ours(tok, records), trl_ds):
        assert ours["input_ids"] == row["input_ids"]
        assert ours["labels"] == row["labels"]


def test_conversational_prompt_completion_equals_trl(tmp_path):
    tok = bpe_tokenizer("llama3", training=True)
    records = []
    for msgs in chats(12, seed=3):
        cut = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        records.append({"prompt": msgs[:cut], "completion": msgs[cut:]})
    trl_ds = _trl_prepared(tok, records, tmp_path)
    for ours, row in zip(_ours(tok, records), trl_ds):
        assert ours["input_ids"] == row["input_ids"]
        assert ours["labels"] == row["labels"]


@pytest.mark.parametrize("style", STYLES)
def test_fallback_without_markers(style, tmp_path):
    """A template without markers: TRL swaps in its training template (same rendering). Llama 3: the
    fallback's mask is TRL's. Qwen2.5: TRL's training template also trains the newline that ends the
    generation prompt (``<|im_start|>assistant`` + newline); apart from those tokens the masks agree."""
    tok = bpe_tokenizer(style, training=False)
    records = [{"messages": m} for m in chats()]
    trl_ds = _trl_prepared(tok, records, tmp_path)
    nl = tok("\n", add_special_tokens=False)["input_ids"]
    for ours, row in zip(_ours(tok, records), trl_ds):
        assert ours["input_ids"] == row["input_ids"]
        if style == "llama3":
            assert ours["labels"] == row["labels"]
            continue
        extra = [i for i, (a, b) in enumerate(zip(ours["labels"], row["labels"])) if a != b]
        assert extra and all(ours["labels"][i] == IGNORE_INDEX and row["input_ids"][i] in nl
                             and tok.decode([row["input_ids"][i - 1]]) == "assistant" for i in extra), extra


def test_fallback_trains_the_turn_and_its_end_token():
    tok = bpe_tokenizer("llama3", training=False)
    msgs = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi how are you"},
            {"role": "user", "content": "fine"}, {"role": "assistant", "content": "good"}]
    ex = tokenize_record({"messages": msgs}, tok)
    trained = tok.decode([t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != IGNORE_INDEX])
    assert trained == "hi how are you<|eot_id|>good<|eot_id|>"
