"""--trust-remote-code: off by default, and when asked it reaches every from_pretrained of train,
alpha-sweep, merge and analyze (model and tokenizer)."""

from __future__ import annotations

import pytest
import transformers

from test_engine_fixtures import pc_records, save_tiny_model, write_jsonl

VERBS = ("train", "alpha-sweep", "merge", "analyze")


@pytest.mark.parametrize("verb", VERBS)
def test_flag_in_help(cli, verb):
    code, out, _ = cli(verb, "--help")
    assert code == 0 and "--trust-remote-code" in out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("trc")
    model, data = save_tiny_model(d / "model"), write_jsonl(d / "d.jsonl", pc_records(4))
    import loradial

    loradial.train(str(model), str(data), rank=2, alpha=4, targets="q_proj", steps=1, batch_size=4, out=d / "run")
    return {"model": model, "data": data, "adapter": d / "run" / "adapters" / "default", "dir": d}


@pytest.fixture
def calls(monkeypatch):
    """Record the trust_remote_code each from_pretrained gets (then load as usual)."""
    seen: list[tuple[str, object]] = []
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        real = cls.from_pretrained

        def spy(*args, _real=real, _name=cls.__name__, **kw):
            seen.append((_name, kw.get("trust_remote_code", "absent")))
            return _real(*args, **kw)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    return seen


def _argv(verb, files, tmp_path):
    m, d, a = str(files["model"]), str(files["data"]), str(files["adapter"])
    return {
        "train": ["train", "--model", m, "--data", d, "--rank", "2", "--alpha", "4", "--targets", "q_proj", "--steps", "1",
                  "--batch-size", "4", "--out", str(tmp_path / "t")],
        "alpha-sweep": ["alpha-sweep", a, "--model", m, "--data", d, "--scales", "1"],
        "merge": ["merge", a, "--model", m, "--out", str(tmp_path / "m")],
        "analyze": ["analyze", a, "--model", m, "--data", d, "--ranks", "1"],
    }[verb]


@pytest.mark.parametrize("verb", VERBS)
def test_cli_flag_reaches_every_loader(files, cli, calls, tmp_path, verb):
    code, _, err = cli(*_argv(verb, files, tmp_path), "--trust-remote-code", "--json")
    assert code == 0, err
    expected = {"AutoModelForCausalLM"} | ({"AutoTokenizer"} if verb != "merge" else set())
    assert {name for name, _ in calls} == expected
    assert all(v is True for _, v in calls), calls


@pytest.mark.parametrize("verb", VERBS)
def test_off_by_default(files, cli, calls, tmp_path, verb):
    code, _, err = cli(*_argv(verb, files, tmp_path), "--json")
    assert code == 0, err
    assert calls and all(v is False for _, v in calls), calls


def test_api_kwargs(files, calls, tmp_path):
    from loradial.adapters.analysis import analyze
    from loradial.adapters.evaluate import alpha_sweep
    from loradial.adapters.surgery import merge

    import loradial

    loradial.train(str(files["model"]), str(files["data"]), rank=2, alpha=4, targets="q_proj", steps=1, batch_size=4,
                   out=tmp_path / "t", trust_remote_code=True)
    alpha_sweep(files["adapter"], files["model"], files["data"], scales=[1], trust_remote_code=True)
    merge(files["adapter"], files["model"], tmp_path / "m", trust_remote_code=True)
    analyze(files["adapter"], model=files["model"], data=files["data"], ranks=[1], trust_remote_code=True)
    assert len(calls) == 7 and all(v is True for _, v in calls), calls


def test_resume_keeps_the_choice(files, calls, tmp_path):
    """A run started with trust_remote_code resumes with it, without the flag being passed again."""
    import loradial
    from loradial.engine.checkpoint import load_checkpoint

    out = tmp_path / "r"
    loradial.train(str(files["model"]), str(files["data"]), rank=2, alpha=4, targets="q_proj", steps=2, batch_size=4,
                   out=out, save_every=1, trust_remote_code=True)
    assert load_checkpoint(out)[1]["run"]["trust_remote_code"] is True
    calls.clear()
    loradial.train(resume=out)
    assert calls and all(v is True for _, v in calls), calls
