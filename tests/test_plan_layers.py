"""`--layers` (PEFT layers_to_transform): reversed, empty and out-of-range ranges are clean errors."""

from __future__ import annotations

import pytest

from loradial import LoradialError
from loradial.cost.planning import parse_layers, plan

BAD = [
    ("5-2", "layer range '5-2' is reversed", "--layers 2-5"),
    (",", "no layer given", "--layers 0-7"),
    ("40-50", "layers 40-50 are outside 0-11 (gpt2 has 12 layers)", "within 0-11"),
    ("10-13", "layers 12-13 are outside 0-11 (gpt2 has 12 layers)", "within 0-11"),
    ("3,12", "layer 12 is outside 0-11 (gpt2 has 12 layers)", "within 0-11"),
]


@pytest.mark.parametrize("layers,message,hint", BAD, ids=[b[0] for b in BAD])
def test_cli_bad_layers_exit_2_with_one_line_and_hint(cli, layers, message, hint):
    code, out, err = cli("plan", "--model", "gpt2", "--targets", "c_attn", "--layers", layers)
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.startswith(f"error: {message}") and "hint:" in err and hint in err


def test_parse_layers():
    assert parse_layers("0-3,8,2") == [0, 1, 2, 3, 8]
    assert parse_layers("4-4") == [4]
    assert parse_layers(None) is None and parse_layers("") is None
    with pytest.raises(LoradialError, match="reversed"):
        parse_layers("0,5-2")
    with pytest.raises(LoradialError, match="no layer"):
        parse_layers([])


def test_api_checks_layers_against_the_model():
    with pytest.raises(LoradialError, match="outside 0-11"):
        plan("gpt2", 8, "c_attn", layers=[11, 12])
    assert plan("gpt2", 8, "c_attn", layers="0-11").rows[0].n_modules == 12
