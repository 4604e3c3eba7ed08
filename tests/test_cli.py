"""`ntkit` command line: kernel results equal the library call, crashes resume exactly, clear errors."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from ntkit._tilestore import FAIL_AFTER_ENV, MANIFEST
from ntkit.cli import main
from ntkit.spec import layer_names

pytestmark = pytest.mark.skipif(not {"Dense", "Relu"} <= set(layer_names()), reason="ntkit.layers.Dense/Relu missing")

SPEC = "Dense(32, W_std=1.5, b_std=0.05); Relu; Dense(32); Erf; Dense(1)"


def _arch():
    from ntkit import layers as L

    return L.serial(L.Dense(32, W_std=1.5, b_std=0.05), L.Relu(), L.Dense(32), L.Erf(), L.Dense(1))


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((23, 4))
    x2 = rng.standard_normal((9, 4))
    np.save(tmp_path / "x1.npy", x1)
    np.savez(tmp_path / "x2.npz", x=x2, y=np.arange(9))
    return tmp_path, x1, x2


def test_kernel_npz_equals_library_call(data, capsys):
    tmp, x1, x2 = data
    out = tmp / "k.npz"
    assert main(["kernel", "--arch", SPEC, "--x", str(tmp / "x1.npy"), "--out", str(out), "--batch-size", "5",
                 "--no-progress"]) == 0
    want = _arch().kernel(torch.from_numpy(x1), get=("nngp", "ntk"))
    with np.load(out, allow_pickle=False) as z:
        np.testing.assert_allclose(z["ntk"], want.ntk.numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(z["nngp"], want.nngp.numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(z["ntk"], z["ntk"].T)  # mirrored tiles: exactly symmetric
    assert not (tmp / "k.npz.parts").exists()
    assert "wrote nngp/ntk kernels of shape (23, 23)" in capsys.readouterr().out
    # refusing to clobber without --overwrite
    assert main(["kernel", "--arch", SPEC, "--x", str(tmp / "x1.npy"), "--out", str(out)]) == 2


def test_kernel_cross_directory_output_and_float32(data):
    tmp, x1, x2 = data
    out = tmp / "kdir"
    assert main(["kernel", "--arch", SPEC, "--x", str(tmp / "x1.npy"), "--x2", str(tmp / "x2.npz"), "--get", "ntk",
                 "--out", str(out), "--batch-size", "4", "--dtype", "float32", "--no-progress"]) == 0
    got = np.load(out / "ntk.npy", allow_pickle=False)
    assert got.dtype == np.float32 and got.shape == (23, 9) and not (out / "nngp.npy").exists()
    want = _arch().kernel(torch.from_numpy(x1), torch.from_numpy(x2), get="ntk").ntk.numpy()
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
    assert json.loads((out / MANIFEST).read_text())["complete"] is True


def test_interrupted_run_resumes_to_identical_matrix(data, monkeypatch):
    tmp, x1, _ = data
    args = ["kernel", "--arch", SPEC, "--x", str(tmp / "x1.npy"), "--out", str(tmp / "k.npz"), "--batch-size", "4",
            "--no-progress"]
    ref_out = tmp / "ref.npz"
    assert main(args[:-4] + [str(ref_out), "--batch-size", "4", "--no-progress"]) == 0
    monkeypatch.setenv(FAIL_AFTER_ENV, "5")
    assert main(args) == 1  # simulated crash after 5 tiles
    man = json.loads((tmp / "k.npz.parts" / MANIFEST).read_text())
    assert len(man["done"]) == 5 and not (tmp / "k.npz").exists()
    monkeypatch.delenv(FAIL_AFTER_ENV)
    from ntkit.layers.base import Layer

    calls = []
    orig = Layer.kernel

    def counting(self, *a, **k):
        calls.append(1)
        return orig(self, *a, **k)

    monkeypatch.setattr(Layer, "kernel", counting)
    assert main(args) == 0
    assert len(calls) == man_total(man) - 5  # only the missing tiles were computed
    with np.load(tmp / "k.npz") as a, np.load(ref_out) as b:
        np.testing.assert_array_equal(a["ntk"], b["ntk"])
        np.testing.assert_array_equal(a["nngp"], b["nngp"])


def man_total(man):
    n = man["shape"][0]
    b = man["blocks"][0]
    nb = -(-n // b)
    return nb * (nb + 1) // 2  # symmetric: upper-triangular tiles only


def test_resume_with_other_data_is_refused(data, monkeypatch):
    tmp, x1, _ = data
    out = str(tmp / "kd")
    monkeypatch.setenv(FAIL_AFTER_ENV, "1")
    assert main(["kernel", "--arch", SPEC, "--x", str(tmp / "x1.npy"), "--out", out, "--batch-size", "4"]) == 1
    monkeypatch.delenv(FAIL_AFTER_ENV)
    np.save(tmp / "other.npy", x1 + 1)
    assert main(["kernel", "--arch", SPEC, "--x", str(tmp / "other.npy"), "--out", out, "--batch-size", "4"]) == 2
    assert main(["kernel", "--arch", SPEC.replace("1.5", "1.4"), "--x", str(tmp / "x1.npy"), "--out", out]) == 2


@pytest.mark.parametrize(
    "argv, code, msg",
    [
        (["kernel", "--arch", "Dense(8); Rellu; Dense(1)", "--x", "X", "--out", "o.npz"], 2, "did you mean Relu"),
        (["kernel", "--arch", "Dense(8); Relu; Dense(1)", "--x", "missing.npy", "--out", "o.npz"], 3, "not found"),
        (["kernel", "--arch", "Dense(8)", "--x", "X", "--out", "o.npz", "--get", "ntk,foo"], 2, "--get"),
        (["kernel", "--arch", "Dense(8)", "--x", "X", "--out", "o.npz", "--batch-size", "0"], 2, "positive integer"),
        (["kernel", "--x", "X", "--out", "o.npz"], 2, "--arch"),
        (["kernel", "--arch", "Dense(8)", "--x", "X", "--out", "o.npz", "--memory-budget", "lots"], 2, "memory_budget"),
        (["kernel", "--arch", "Conv(4, (3, 3)); Relu; Dense(1)", "--x", "X", "--out", "o.npz"], 2, "does not fit"),
        (["reproduce", "--dataset", "nope.npz"], 3, "not found"),
        (["reproduce", "--widths", "64"], 2, "two positive"),
        (["frobnicate"], 2, "invalid choice"),
    ],
)
def test_errors_one_line_and_exit_codes(data, capsys, monkeypatch, argv, code, msg):
    tmp, _, _ = data
    argv = [str(tmp / "x1.npy") if a == "X" else a for a in argv]
    monkeypatch.chdir(tmp)
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert msg in err and err.startswith("error:") and "Traceback" not in err and len(err.splitlines()) == 1


def test_fashion_mnist_missing_gives_install_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NTKIT_FASHION_MNIST", str(tmp_path))
    assert main(["reproduce", "--dataset", "fashion-mnist", "--tiny", "--out", str(tmp_path / "o")]) == 3
    assert "apt-get install -y dataset-fashion-mnist" in capsys.readouterr().err


def test_debug_shows_traceback(capsys):
    assert main(["--debug", "kernel", "--arch", "Dense(8)", "--x", "/nonexistent.npy", "--out", "o.npz"]) == 3
    assert "Traceback" in capsys.readouterr().err


def test_help_has_examples(capsys):
    assert main(["--help"]) == 0
    assert "examples:" in capsys.readouterr().out
    for cmd in ("reproduce", "kernel"):
        assert main([cmd, "--help"]) == 0
        out = capsys.readouterr().out
        assert "examples:" in out and f"ntkit {cmd}" in out
    assert main([]) == 2


@pytest.mark.slow
def test_killed_subprocess_resumes(data):
    """A real SIGINT/SIGKILL to a running `ntkit kernel` loses no finished tile."""
    tmp, x1, _ = data
    big = np.random.default_rng(1).standard_normal((400, 8))
    np.save(tmp / "big.npy", big)
    out = tmp / "kb.npz"
    cmd = [sys.executable, "-m", "ntkit.cli", "kernel", "--arch", SPEC, "--x", str(tmp / "big.npy"), "--out", str(out),
           "--batch-size", "20", "--no-progress"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    man = tmp / "kb.npz.parts" / MANIFEST
    deadline = time.time() + 120
    while time.time() < deadline:
        if man.exists() and len(json.loads(man.read_text())["done"]) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(json.loads(man.read_text())["done"])
    assert done_before >= 3
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert f"resuming: {done_before}/" in r.stderr
    want = _arch().kernel(torch.from_numpy(big), get=("nngp", "ntk"))
    with np.load(out) as z:
        np.testing.assert_allclose(z["ntk"], want.ntk.numpy(), rtol=1e-12, atol=1e-14)
