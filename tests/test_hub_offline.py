"""Resolving a Hub id offline: one request with a short timeout, no retries, a one-line error."""

from __future__ import annotations

import huggingface_hub

from loradial.models import resolve as models


def test_offline_hub_fetch_is_one_attempt(monkeypatch, cli):
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)  # nothing cached
    calls = []

    def offline(url, *args, **kwargs):
        calls.append((url, kwargs.get("timeout")))
        raise ConnectionError("[Errno -2] Name or service not known")

    def no_download(*args, **kwargs):  # the retrying download must not run after a failed probe
        raise AssertionError("hf_hub_download called")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", offline)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    code, out, err = cli("plan", "--model", "someorg/somemodel")
    assert code == 2 and out == ""
    assert len(calls) == 1 and calls[0][1] == models.HUB_TIMEOUT <= 10
    assert "config.json" in calls[0][0] and "someorg/somemodel" in calls[0][0]
    assert "could not fetch config.json of 'someorg/somemodel' from the Hub (ConnectionError)" in err
    assert "Retry" not in err and len(err.strip().splitlines()) == 2  # error + hint


def test_offline_hub_fetch_falls_back_to_the_cache(monkeypatch, tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text('{"model_type": "llama"}')
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata",
                        lambda *a, **k: (_ for _ in ()).throw(ConnectionError("offline")))
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, f, **k: str(cfg))
    assert models._fetch_hub_config("someorg/somemodel") == {"model_type": "llama"}
