"""ntkit.data.uci: ARFF encoding on a hand-written file, published UCI set sizes, errors."""

from __future__ import annotations

import os

import numpy as np
import pytest

from ntkit.data import uci

_ARFF = """% tiny test relation
@relation toy
@attribute num numeric
@attribute yesno {no,yes}
@attribute colour {red,green,blue}
@attribute grade {'1','2','10'}
@attribute class {neg,pos}
@data
1.5,yes,green,2,pos
?,no,?,10,neg
-2,?,red,1,pos
"""


def _write_weka(root, name: str, text: str) -> None:
    d = os.path.join(root, "usr", "share", "doc", "weka", "examples")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "w") as fh:
        fh.write(text)


def test_arff_encoding_by_hand(tmp_path):
    _write_weka(tmp_path, "vote.arff", _ARFF.replace("class {neg,pos}", "Class {neg,pos}"))
    ds = uci.load_uci("vote", data_dir=tmp_path)
    assert ds.feature_names == ["num", "yesno=yes", "colour=red", "colour=green", "colour=blue", "grade"]
    expected = np.array([
        [1.5, 1.0, 0, 1, 0, 2.0],
        [np.nan, 0.0, 0, 0, 0, 10.0],  # missing numeric -> NaN; missing 3-valued nominal -> all zero
        [-2.0, np.nan, 1, 0, 0, 1.0],  # missing binary nominal -> NaN
    ])
    np.testing.assert_array_equal(ds.X, expected)
    assert ds.y.tolist() == [1, 0, 1]
    assert ds.target_names == ["neg", "pos"]
    assert ds.n_missing == 2


def test_sklearn_sets_have_published_sizes():
    pytest.importorskip("sklearn")
    for name, shape, counts in [("iris", (150, 4), [50, 50, 50]), ("wine", (178, 13), [59, 71, 48]),
                                ("breast-cancer-wisc-diag", (569, 30), [212, 357])]:
        ds = uci.load_uci(name)
        assert ds.X.shape == shape and np.bincount(ds.y).tolist() == counts
        assert ds.X.dtype == np.float64 and ds.y.dtype == np.int64


# published sizes (UCI repository / mlbench documentation): n, d after encoding, class counts
_DEBIAN = [
    ("pima", 768, 8, [500, 268]),
    ("ionosphere", 351, 34, [126, 225]),
    ("glass", 214, 9, [70, 76, 17, 13, 9, 29]),
    ("german-credit", 1000, None, [700, 300]),
    ("segment", 2310, 19, [330] * 7),
    ("vote", 435, 16, [267, 168]),
    ("sonar", 208, 60, [111, 97]),
    ("vehicle", 846, 18, [218, 212, 217, 199]),
    ("zoo", 101, 16, [41, 20, 5, 13, 4, 8, 10]),
    ("breast-cancer-wisc", 699, 9, [458, 241]),
]


@pytest.mark.parametrize("name,n,d,counts", _DEBIAN)
def test_debian_sets_have_published_sizes(name, n, d, counts):
    source = uci._REGISTRY[name][0]
    if source == "mlbench":
        pytest.importorskip("rdata")
    try:
        ds = uci.load_uci(name)
    except FileNotFoundError:
        pytest.skip("Debian files not prepared (ntkit.data.uci.prepare_uci_data)")
    assert ds.n_samples == n
    if d is not None:
        assert ds.n_features == d
    assert np.bincount(ds.y).tolist() == counts
    assert np.isfinite(ds.X).sum() + ds.n_missing == ds.X.size


def test_missing_files_say_how_to_install(tmp_path):
    if os.path.isfile("/usr/share/doc/weka/examples/diabetes.arff"):
        pytest.skip("weka is installed system-wide")
    with pytest.raises(FileNotFoundError, match="apt-get download weka r-cran-mlbench"):
        uci.load_uci("pima", data_dir=tmp_path)


def test_bad_names_and_missing_tools(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="name must be one of"):
        uci.load_uci("mnist")
    with pytest.raises(ValueError, match="source"):
        uci.list_uci_datasets("uci")
    assert len(uci.list_uci_datasets()) >= 10
    monkeypatch.setattr(uci.shutil, "which", lambda tool: None)
    with pytest.raises(RuntimeError, match="apt-get"):
        uci.prepare_uci_data(tmp_path, verbose=False)


def test_data_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("NTKIT_UCI_DIR", str(tmp_path))
    assert uci.uci_data_dir() == str(tmp_path)
    _write_weka(tmp_path, "diabetes.arff", _ARFF)
    assert uci.load_uci("pima").n_samples == 3
