"""2-rank gloo runs on loopback vs the single-process result; kill-and-resume."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from ntkit import distributed as D
from ntkit.empirical import empirical_ntk

from ._launch import torchrun
from ._worker import make_model

WORKER = os.path.join(os.path.dirname(__file__), "_worker.py")
N, DIM, BS, RIDGE = 40, 5, 8, 1e-2  # 5 row blocks -> 15 upper-triangle tiles


@pytest.fixture
def data(tmp_path):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(N, DIM, generator=g, dtype=torch.float64)
    y = torch.randn(N, generator=g, dtype=torch.float64)
    path = tmp_path / "data.npz"
    np.savez(path, x=x.numpy(), y=y.numpy())
    return x, y, str(path)


def _reference(x: torch.Tensor) -> np.ndarray:
    model = make_model(x.shape[1])
    return empirical_ntk(model, x, output="trace").detach().numpy()


def _single_process_store(x: torch.Tensor, path: str) -> D.KernelStore:
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # the torchrun workers run with OMP_NUM_THREADS=1: same arithmetic
    try:
        return D.kernel(make_model(x.shape[1]), x, store=path, batch_size=BS, dtype=torch.float64)
    finally:
        torch.set_num_threads(old)


def test_two_ranks_gloo_kernel_and_cg_match_single_process(data, tmp_path):
    x, y, dpath = data
    out = tmp_path / "out"
    out.mkdir()
    store = str(tmp_path / "store")
    r = torchrun(WORKER, ["--data", dpath, "--store", store, "--out", str(out), "--batch-size", str(BS),
                          "--ridge", str(RIDGE)], timeout=90)
    assert r.returncode == 0, r.stdout[-4000:]
    stats = [json.loads((out / f"rank{k}.json").read_text()) for k in range(2)]
    # both ranks did work, together exactly the 15 tiles, and each multiplied its own half of the rows
    computed = [s["stats"]["tiles_computed"] for s in stats]
    assert all(c > 0 for c in computed) and sum(computed) == 15
    assert stats[0]["rows"] == [0, N // 2] and stats[1]["rows"] == [N // 2, N]
    # the distributed kernel equals the single-process empirical NTK (no tiling, one process)
    K_ref = _reference(x)
    st = D.KernelStore.attach(store)
    K = st.read_rows("ntk", 0, N)
    np.testing.assert_allclose(K, K_ref, rtol=1e-12, atol=1e-12 * np.abs(K_ref).max())
    # the distributed CG solution equals a dense direct solve
    alpha = np.load(out / "alpha.npy")
    exact = torch.linalg.solve(torch.from_numpy(K_ref) + RIDGE * torch.eye(N, dtype=torch.float64), y).numpy()
    assert stats[0]["converged"] and stats[0]["iterations"] == stats[1]["iterations"]
    np.testing.assert_allclose(alpha, exact, rtol=1e-8, atol=1e-8 * np.abs(exact).max())


def test_killed_run_resumes_with_identical_output(data, tmp_path):
    x, _, dpath = data
    out = tmp_path / "out"
    out.mkdir()
    store = str(tmp_path / "store")
    args = ["--data", dpath, "--store", store, "--out", str(out), "--batch-size", str(BS), "--no-solve"]
    # rank 0 SIGKILLs itself after writing 2 tiles; torchrun tears the job down
    r = torchrun(WORKER, args, env={"NTKIT_TEST_KILL_AFTER_TILES": "2:0"}, timeout=90)
    assert r.returncode != 0, "the killed run should fail"
    st = D.KernelStore.attach(store)
    done_before = st.done()
    assert 2 <= len(done_before) < st.n_tiles, (len(done_before), st.n_tiles)
    # resume in this process (one rank now: the plan does not depend on the world size);
    # only the missing tiles are computed
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # the torchrun workers ran with OMP_NUM_THREADS=1: same arithmetic
    try:
        resumed = D.kernel(make_model(DIM), x, store=store, batch_size=BS, dtype=torch.float64)
    finally:
        torch.set_num_threads(old)
    assert resumed.stats["tiles_computed"] == st.n_tiles - len(done_before)
    assert resumed.stats["tiles_skipped"] == len(done_before)
    assert st.complete
    # identical (bit for bit) to an uninterrupted run with the same tile plan
    fresh = _single_process_store(x, str(tmp_path / "fresh"))
    assert fresh.stats["tiles_computed"] == st.n_tiles
    assert np.array_equal(st.read_rows("ntk", 0, N), fresh.read_rows("ntk", 0, N))


def test_resume_refuses_other_inputs(data, tmp_path):
    x, _, _ = data
    store = str(tmp_path / "store")
    _single_process_store(x, store)
    with pytest.raises(ValueError, match="different 'fingerprint'"):
        D.kernel(make_model(DIM), x + 1, store=store, batch_size=BS, dtype=torch.float64)
    with pytest.raises(ValueError, match="different 'dtype'"):
        D.kernel(make_model(DIM), x, store=store, batch_size=BS, dtype=torch.float32)
