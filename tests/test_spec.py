"""Architecture SPEC parsing: the three forms agree, only whitelisted layers, never evaluation."""

import pytest
import torch

from ntkit.spec import SpecError, layer_names, load_spec, parse_spec

HAS_DENSE = {"Dense", "Relu"} <= set(layer_names())
needs_dense = pytest.mark.skipif(not HAS_DENSE, reason="ntkit.layers.Dense/Relu not available yet")

TEXT = "Dense(64, W_std=1.5, b_std=0.05); Relu; Dense(1)"
JSON = '{"layers": [{"type": "Dense", "args": [64], "W_std": 1.5, "b_std": 0.05}, "Relu", {"type": "Dense", "args": [1]}]}'
TOML = """
[[layer]]
type = "Dense"
args = [64]
W_std = 1.5
b_std = 0.05

[[layer]]
type = "Relu"

[[layer]]
type = "Dense"
args = [1]
"""


@needs_dense
@pytest.mark.parametrize("form", [TEXT, JSON, TOML, TEXT.replace("; ", "\n") + "\n# comment\n"])
def test_forms_give_same_kernel(form):
    from ntkit import layers as L

    ref = L.serial(L.Dense(64, W_std=1.5, b_std=0.05), L.Relu(), L.Dense(1))
    x = torch.randn(5, 3, dtype=torch.float64)
    got = parse_spec(form).kernel(x, get=("nngp", "ntk"))
    want = ref.kernel(x, get=("nngp", "ntk"))
    torch.testing.assert_close(got.ntk, want.ntk, rtol=0, atol=0)
    torch.testing.assert_close(got.nngp, want.nngp, rtol=0, atol=0)


def test_nested_combinators_text_and_json():
    a = parse_spec("FanOut(2); parallel(Identity, serial(Identity, Identity)); FanInSum")
    b = parse_spec('[{"type": "FanOut", "args": [2]}, {"type": "parallel", "layers": ["Identity", '
                   '{"type": "serial", "layers": ["Identity", "Identity"]}]}, "FanInSum"]')
    assert repr(a) == repr(b)
    assert "parallel(Identity(), serial(Identity(), Identity()))" in repr(a)


def test_single_layer_returned_as_is():
    assert type(parse_spec("Identity")).__name__ == "Identity"


@pytest.mark.parametrize(
    "bad, match",
    [
        ("Foo(3)", "unknown layer 'Foo'"),
        ("FanOut(__import__('os').system('true'))", "plain layer names"),
        ("FanOut(__import__('os'))", "unknown layer '__import__'"),
        ("os.system('true')", "plain layer names"),
        ("FanOut(2)()", "plain layer names"),
        ("FanOut(n=1+1)", "not a literal"),
        ("FanOut(*[2])", r"'\*' arguments"),
        ("FanOut(**{'n': 2})", r"'\*\*' arguments"),
        ("FanOut(2", "unbalanced"),
        ("FanOut(2))", "unbalanced"),
        ("FanOut('2)", "unterminated"),
        ("", "empty"),
        ("   ;  ", "no layers"),
        ("FanOut(0)", "bad arguments for FanOut"),
        ("FanOut(x=2)", "bad arguments for FanOut"),
        ("[1, 2]", "a layer must be"),
        ('{"layers": [{"args": [1]}]}', "needs a string 'type'"),
        ('{"other": 1}', "must hold a 'layers' list"),
        ("FanOut(lambda: 0)", "not a literal"),
    ],
)
def test_bad_specs_are_clear_spec_errors(bad, match):
    with pytest.raises(SpecError, match=match):
        parse_spec(bad)


def test_spec_error_is_value_error_and_typo_suggestion():
    with pytest.raises(ValueError, match="did you mean FanOut"):
        parse_spec("FanOt(2)")


def test_no_evaluation_side_effects(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    with pytest.raises(SpecError):
        parse_spec(f"FanOut(open({str(marker)!r}, 'w'))")
    assert not marker.exists()


def test_load_spec_files(tmp_path):
    p = tmp_path / "arch.json"
    p.write_text('["FanOut(2)", "parallel(Identity, Identity)", "FanInSum"]')
    assert len(load_spec(str(p)).layers) == 3
    t = tmp_path / "arch.toml"
    t.write_text('layers = ["Identity", "Identity"]\n')
    assert len(load_spec(str(t)).layers) == 2
    with pytest.raises(FileNotFoundError, match="not found"):
        load_spec(str(tmp_path / "missing.toml"))


def test_whitelist_only_layers():
    import ntkit.layers as L
    from ntkit.layers.base import Layer

    names = layer_names()
    assert "serial" in names and "parallel" in names
    for n in names:
        obj = getattr(L, n)
        assert n in ("serial", "parallel") or issubclass(obj, Layer)
    assert "Kernel" not in names and "BuildContext" not in names and "input_kernel" not in names
