"""A model that ships its own code (config.json ``auto_map``): refused with a hint without
--trust-remote-code; with it, plan builds it on the meta device from that code (counts equal PEFT's
on the same model) and a sweep trains it."""

from __future__ import annotations

import json

import pytest

import loradial
from loradial.errors import LoradialError
from test_engine_fixtures import pc_records, save_tiny_model, write_jsonl

CONFIG_PY = '''from transformers import LlamaConfig


class TinyCustomConfig(LlamaConfig):
    model_type = "tinycustom"
'''
MODELING_PY = '''from transformers import LlamaForCausalLM

from .configuration_tinycustom import TinyCustomConfig


class TinyCustomForCausalLM(LlamaForCausalLM):
    config_class = TinyCustomConfig
'''


@pytest.fixture(scope="module")
def custom(tmp_path_factory):
    d = save_tiny_model(tmp_path_factory.mktemp("remote") / "model")
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="tinycustom", architectures=["TinyCustomForCausalLM"],
               auto_map={"AutoConfig": "configuration_tinycustom.TinyCustomConfig",
                         "AutoModelForCausalLM": "modeling_tinycustom.TinyCustomForCausalLM"})
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "configuration_tinycustom.py").write_text(CONFIG_PY)
    (d / "modeling_tinycustom.py").write_text(MODELING_PY)
    return d


def test_without_the_flag_the_hint_names_it(custom, cli):
    with pytest.raises(LoradialError) as e:
        loradial.plan(str(custom), 8, "q_proj,v_proj")
    assert "--trust-remote-code" in e.value.hint
    code, _, err = cli("plan", "--model", str(custom), "--rank", "8")
    assert code == 2 and "--trust-remote-code" in err


def test_plan_builds_it_from_its_own_code(custom, cli):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    res = loradial.plan(str(custom), 8, ["q_proj,v_proj", "all-linear"], trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(str(custom), trust_remote_code=True)
    assert type(model).__name__ == "TinyCustomForCausalLM"
    for row, targets in zip(res.rows, (["q_proj", "v_proj"], "all-linear")):
        peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(custom), trust_remote_code=True),
                                    LoraConfig(r=8, target_modules=targets))
        assert row.trainable_params == peft_model.get_nb_trainable_parameters()[0]
    code, _, _ = cli("plan", "--model", str(custom), "--rank", "8", "--trust-remote-code")
    assert code == 0


def test_sweep_trains_it_and_keeps_the_choice_for_resume(custom, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", pc_records(16))
    res = loradial.sweep(str(custom), str(data), out=tmp_path / "sw", ranks=[2], lrs=[5e-3], targets=["q_proj"],
                         steps=2, batch_size=4, max_len=32, trust_remote_code=True)
    assert res.settings["train"]["trust_remote_code"] is True and res.configs[0]["final_train_loss"] is not None
    assert "trust_remote_code: true" in (tmp_path / "sw" / "sweep.yaml").read_text()


def test_a_bundled_config_with_auto_map_ignores_the_flag():
    """phi-3-mini's bundled config.json keeps its auto_map, but a bundled name has no code to run."""
    with_flag = loradial.plan("phi-3-mini", 8, "all-linear", trust_remote_code=True)
    assert with_flag.rows[0].trainable_params == loradial.plan("phi-3-mini", 8, "all-linear").rows[0].trainable_params
