"""Adapters and base models by Hub id: one resolver (loradial.models.hub) for every adapter verb and the
--model of merge / alpha-sweep / analyze. Nothing is downloaded: snapshot_download is replaced by a
function that returns local directories, and the offline error runs the real one with HF_HUB_OFFLINE."""

from __future__ import annotations

import json

import huggingface_hub
import pytest

from test_engine_fixtures import pc_records, save_tiny_model, tiny_llama, write_jsonl

from loradial.models import hub


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    import peft

    tmp = tmp_path_factory.mktemp("hub")
    model_dir = save_tiny_model(tmp / "model")
    pm = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                           init_lora_weights=False))
    pm.save_pretrained(str(tmp / "adapter"))
    data = write_jsonl(tmp / "eval.jsonl", pc_records(6))
    return {"adapter": tmp / "adapter", "model": model_dir, "data": data}


@pytest.fixture
def fake_hub(made, monkeypatch):
    calls = []
    repos = {"someone/tiny-adapter": made["adapter"], "someone/tiny-llama": made["model"]}

    def snapshot_download(repo_id, allow_patterns=None, **kwargs):
        calls.append((repo_id, list(allow_patterns)))
        return str(repos[repo_id])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_every_adapter_verb_takes_a_hub_id(made, fake_hub, cli, tmp_path):
    code, out, _ = cli("analyze", "someone/tiny-adapter", "--json")
    assert code == 0
    code, local, _ = cli("analyze", made["adapter"], "--json")
    strip = lambda d: {k: v for k, v in json.loads(d).items() if k != "adapter"}  # noqa: E731
    assert strip(out) == strip(local)
    assert cli("resize", "someone/tiny-adapter", "--rank", "2", "--out", tmp_path / "r2")[0] == 0
    assert json.loads((tmp_path / "r2" / "adapter_config.json").read_text())["r"] == 2
    assert cli("rescale", "someone/tiny-adapter", "--scale", "0.5", "--out", tmp_path / "half")[0] == 0
    assert (tmp_path / "half" / "adapter_model.safetensors").is_file()
    assert fake_hub and all(c == ("someone/tiny-adapter", hub.ADAPTER_FILES) for c in fake_hub)


def test_model_option_takes_a_hub_id(made, fake_hub, cli, tmp_path):
    args = ("--data", made["data"], "--scales", "0,1", "--json")
    code, out, _ = cli("alpha-sweep", "someone/tiny-adapter", "--model", "someone/tiny-llama", *args)
    assert code == 0
    code, local, _ = cli("alpha-sweep", made["adapter"], "--model", made["model"], *args)
    assert json.loads(out)["losses"] == json.loads(local)["losses"]
    code, out, _ = cli("analyze", "someone/tiny-adapter", "--model", "someone/tiny-llama", "--data", made["data"], "--json")
    assert code == 0 and json.loads(out)["evaluation"]["n_examples"] == 6
    code, _, err = cli("merge", "someone/tiny-adapter", "--model", "someone/tiny-llama", "--out", tmp_path / "merged")
    assert code == 0, err
    assert (tmp_path / "merged" / "tokenizer.json").is_file()  # the snapshot's tokenizer travels with the weights
    assert ("someone/tiny-llama", hub.MODEL_FILES) in fake_hub
    assert not any("*.bin" in p or "*.pt" in p for _, pats in fake_hub for p in pats)  # never pickle checkpoints


def test_offline_error_is_one_clean_line(monkeypatch, cli, tmp_path):
    """The real snapshot_download, offline, with an empty cache."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    for argv in (("analyze", "someone/not-cached"), ("resize", "someone/not-cached", "--rank", "2", "--out", tmp_path / "o")):
        code, out, err = cli(*argv)
        assert code == 2 and out == ""
        assert err.splitlines() == ["error: the adapter 'someone/not-cached' is not in the Hugging Face cache and HF_HUB_OFFLINE is set",
                                    "hint: unset HF_HUB_OFFLINE to download it, or pass a local adapter directory"]


def test_hub_errors_and_what_counts_as_an_id(monkeypatch, made, tmp_path):
    from loradial.errors import LoradialError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def missing(repo_id, **kw):
        raise OSError(f"404 Client Error. Repository Not Found for url: {repo_id}\nmore detail")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", missing)
    with pytest.raises(LoradialError, match="could not fetch the adapter 'someone/nope' from the Hub: 404") as e:
        hub.resolve_adapter("someone/nope")
    assert "huggingface-cli login" in e.value.hint
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(made["model"]))
    with pytest.raises(LoradialError, match="has no adapter_config.json"):
        hub.resolve_adapter("someone/a-full-model")
    assert hub.is_hub_id("owner/name") and hub.is_hub_id("Qwen/Qwen2.5-0.5B")
    assert not hub.is_hub_id("./owner/name") and not hub.is_hub_id("a/b/c") and not hub.is_hub_id(str(made["adapter"]))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "x").mkdir(parents=True)
    assert not hub.is_hub_id("runs/x")  # an existing local path always wins
