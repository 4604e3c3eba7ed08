"""Resumable tile store: results equal a direct computation, crashes lose no finished tile."""

import json
import os

import numpy as np
import pytest

from ntkit._tilestore import (
    FAIL_AFTER_ENV,
    MANIFEST,
    TileStore,
    TileStoreMismatch,
    fingerprint_array,
)


def _fill(st, a, b, calls):
    for t in st.pending():
        s1, s2 = st.slices(t)
        calls.append(t)
        st.write(t, {"k": a[s1] @ b[s2].T, "d": (a[s1, None, :] - b[None, s2, :]).sum(-1)})


@pytest.mark.parametrize("symmetric", [True, False])
def test_complete_run_matches_direct(tmp_path, symmetric):
    rng = np.random.default_rng(0)
    # small integers: every product/sum is exact in float64, so tiles must match bit for bit
    a = rng.integers(-5, 6, size=(11, 4)).astype(np.float64)
    b = a if symmetric else rng.integers(-5, 6, size=(7, 4)).astype(np.float64)
    st = TileStore.open(str(tmp_path / "s"), names=["k", "d"], shape=(len(a), len(b)), dtype="float64",
                        blocks=(3, 3), symmetric=symmetric, fingerprint={"a": fingerprint_array(a)})
    calls = []
    _fill(st, a, b, calls)
    assert st.complete
    # symmetric: only the upper triangle of the 4x4 tile grid is computed, the rest mirrored
    assert len(calls) == (10 if symmetric else 4 * 3)
    np.testing.assert_array_equal(st.array("k"), a @ b.T)
    if not symmetric:
        np.testing.assert_array_equal(st.array("d"), (a[:, None] - b[None]).sum(-1))


def test_crash_then_resume_computes_only_missing_tiles(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    a = rng.integers(-5, 6, size=(10, 3)).astype(np.float64)
    kw = dict(names=["k", "d"], shape=(10, 10), dtype="float64", blocks=(4, 4), symmetric=False,
              fingerprint={"a": fingerprint_array(a)})
    monkeypatch.setenv(FAIL_AFTER_ENV, "4")
    st = TileStore.open(str(tmp_path), **kw)
    calls = []
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fill(st, a, a, calls)
    assert calls == [0, 1, 2, 3]
    man = json.loads((tmp_path / MANIFEST).read_text())
    assert man["done"] == [0, 1, 2, 3] and man["complete"] is False
    monkeypatch.delenv(FAIL_AFTER_ENV)
    st2 = TileStore.open(str(tmp_path), **dict(kw, blocks=(2, 2)))  # stored plan wins
    assert st2.manifest["blocks"] == [4, 4]
    calls2 = []
    _fill(st2, a, a, calls2)
    assert calls2 == list(range(4, 9))
    np.testing.assert_array_equal(st2.array("k"), a @ a.T)


def test_mismatched_arguments_refused(tmp_path):
    a = np.ones((4, 2))
    kw = dict(names=["k"], shape=(4, 4), dtype="float64", blocks=(2, 2), symmetric=True,
              fingerprint={"a": fingerprint_array(a)})
    TileStore.open(str(tmp_path), **kw)
    with pytest.raises(TileStoreMismatch, match="'fingerprint'"):
        TileStore.open(str(tmp_path), **dict(kw, fingerprint={"a": fingerprint_array(a + 1)}))
    with pytest.raises(TileStoreMismatch, match="'dtype'"):
        TileStore.open(str(tmp_path), **dict(kw, dtype="float32"))
    with pytest.raises(TileStoreMismatch, match="'names'"):
        TileStore.open(str(tmp_path), **dict(kw, names=["k", "z"]))
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(TileStoreMismatch, match="not a readable"):
        TileStore.open(str(tmp_path), **kw)


def test_manifest_written_atomically_no_temp_left(tmp_path):
    st = TileStore.open(str(tmp_path), names=["k"], shape=(3, 3), dtype="float32", blocks=(1, 3),
                        symmetric=False, fingerprint={})
    for t in st.pending():
        st.write(t, {"k": np.zeros((1, 3))})
    assert sorted(os.listdir(tmp_path)) == ["k.npy", MANIFEST]
    with pytest.raises(ValueError, match="shape"):
        st.write(0, {"k": np.zeros((2, 3))})


def test_fingerprint_sensitive_to_dtype_shape_and_values():
    a = np.arange(6.0)
    assert fingerprint_array(a) != fingerprint_array(a.reshape(2, 3))
    assert fingerprint_array(a) != fingerprint_array(a.astype(np.float32))
    b = a.copy()
    b[3] += 1e-12
    assert fingerprint_array(a) != fingerprint_array(b)
