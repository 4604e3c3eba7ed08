"""`ntkit reproduce` end to end (tiny preset) and the pipeline's numerical pieces."""

import json
import math
import os

import numpy as np
import pytest
import torch

from ntkit.cli import main
from ntkit.report import reproduce as R
from ntkit.report.html import render_report, verdict_badge


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rep") / "out"
    code = main(["reproduce", "--tiny", "--out", str(out), "--no-progress"])
    assert code == 0
    return out, json.loads((out / "metrics.json").read_text())


def test_outputs_exist_and_are_self_contained(tiny_run):
    out, _ = tiny_run
    page = (out / "report.html").read_text(encoding="utf-8")
    figs = sorted(os.listdir(out / "figures"))
    assert figs == ["1_kernel_convergence.png", "2_training_dynamics.png", "3_lazy_training.png",
                    "4_spectrum.png", "6_bounds.png"]
    assert page.count("data:image/png;base64,") == len(figs)
    # nothing fetched from elsewhere: every src is a data URI, no external links/scripts
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert page.count("src='data:") == page.count("src=")
    for word in ("agrees", "Summary", "NTK regression"):
        assert word in page
    # only the three outputs were written
    assert sorted(os.listdir(out)) == ["figures", "metrics.json", "report.html"]


def test_metrics_key_numbers_sane(tiny_run):
    _, m = tiny_run
    s = m["steps"]
    conv = s["kernel_convergence"]["metrics"]
    assert conv["ntk"]["slope"] < 0 and conv["nngp"]["slope"] < 0
    # the distance at the largest width is below the one at the smallest (law of large numbers)
    assert conv["ntk"]["mean_distance"][-1] < conv["ntk"]["mean_distance"][0]
    rows = s["test_performance"]["metrics"]["rows"]
    chance = s["test_performance"]["metrics"]["chance_accuracy"]
    assert rows[0]["model"].startswith("NTK regression")
    assert rows[0]["test_accuracy"] > chance + 0.2
    assert s["training_dynamics"]["metrics"]["gap_slope"] < 0
    assert s["lazy_training"]["metrics"]["kernel_change_slope"] < 0
    # lazy training: relative weight change shrinks with width
    assert s["lazy_training"]["metrics"]["relative_weight_change_slope"] < 0
    assert s["bounds"]["metrics"]["bound_mean"] < s["bounds"]["metrics"]["bound_shuffled_labels_mean"]
    assert m["config"]["preset_name"] == "tiny" and m["dataset"]["name"] == "digits"
    # JSON-safe: strict parsing rejects NaN/Infinity tokens
    json.loads(json.dumps(m), parse_constant=lambda c: pytest.fail(f"non-finite {c} in metrics"))


def test_ntk_dynamics_equals_iterated_linear_gd():
    """Closed form vs literally iterating GD on the linearised model (independent algorithm)."""
    g = torch.Generator().manual_seed(0)
    n, m, k = 12, 5, 3
    A = torch.randn(n + m, 20, generator=g, dtype=torch.float64)
    K = A @ A.T / 20 + 0.05 * torch.eye(n + m, dtype=torch.float64)
    Ktt, Kst = K[:n, :n], K[n:, :n]
    y = torch.randn(n, k, generator=g, dtype=torch.float64)
    ctx = R.Context(cfg=R.ReproduceConfig(), out_dir=".", x_train=torch.zeros(n, 1), y_train=y,
                    x_test=torch.zeros(m, 1), y_test=torch.zeros(m, k), labels_train=None, labels_test=None,
                    dataset_info={}, progress=False)
    ctx.cache["analytic"] = {"ntk_tt": Ktt, "ntk_st": Kst}
    lam_max = float(torch.linalg.eigvalsh(Ktt).max())
    lr = 2 * n / lam_max * 0.5  # top direction's factor is exactly 0: the edge case
    steps = [0, 1, 3, 10, 40]
    got = R._ntk_dynamics(ctx, lr, steps)
    f_tr, f_te = torch.zeros(n, k, dtype=torch.float64), torch.zeros(m, k, dtype=torch.float64)
    for t in range(41):
        if t in steps:
            torch.testing.assert_close(got[t][0], f_tr, rtol=1e-9, atol=1e-11)
            torch.testing.assert_close(got[t][1], f_te, rtol=1e-9, atol=1e-11)
        r = f_tr - y
        f_tr, f_te = f_tr - lr / n * Ktt @ r, f_te - lr / n * Kst @ r


def test_loglog_slope_exact_on_power_law_and_se():
    x = [8, 32, 128, 512]
    slope, se = R._loglog_slope(x, [3.0 * v**-0.5 for v in x])
    assert slope == pytest.approx(-0.5, abs=1e-12) and se == pytest.approx(0.0, abs=1e-9)
    assert math.isnan(R._loglog_slope([1, 2], [1, 2])[1])


def test_gd_train_matches_manual_sgd_step():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2).double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    W0, b0 = net.weight.detach().clone(), net.bias.detach().clone()
    ctx = R.Context(cfg=R.ReproduceConfig(), out_dir=".", x_train=x, y_train=y, x_test=x, y_test=y,
                    labels_train=None, labels_test=None, dataset_info={}, progress=False)
    rec = R._gd_train(ctx, net, x, y, x, lr=0.1, steps=1, record=[0, 1])
    # L = 1/(2n) sum ||Wx + b - y||^2  =>  dL/dW = (1/n) R^T x, dL/db = (1/n) sum R
    Rm = x @ W0.T + b0 - y
    W1, b1 = W0 - 0.1 * Rm.T @ x / 5, b0 - 0.1 * Rm.sum(0) / 5
    torch.testing.assert_close(rec[1][0], x @ W1.T + b1)


def test_prepare_data_conventions():
    cfg = R.ReproduceConfig.preset("tiny")
    xtr, ytr, xte, yte, ltr, lte, info = R.prepare_data(cfg)
    d = xtr.shape[1]
    torch.testing.assert_close((xtr**2).sum(1), torch.full((len(xtr),), float(d), dtype=torch.float64))
    assert ytr.shape == (cfg.n_train, 10)
    torch.testing.assert_close(ytr.sum(1), torch.zeros(len(ytr), dtype=torch.float64), atol=1e-12, rtol=0)
    assert (ytr.argmax(1).numpy() == ltr).all() and info["classes"] == 10
    cnn = R.prepare_data(R.ReproduceConfig.preset("tiny", arch="cnn"))
    assert tuple(cnn[0].shape[1:]) == (1, 8, 8)


def test_user_file_dataset(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 6))
    y = (x[:, 0] > 0).astype(np.int64)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    cfg = R.ReproduceConfig.preset("tiny", dataset=str(tmp_path / "d.npz"))
    xtr, ytr, xte, yte, ltr, lte, info = R.prepare_data(cfg)
    assert ytr.shape[1] == 2 and len(xte) == 20 and info["source"] == "user file"


def test_safe_target_refuses_escape(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "figures").symlink_to(tmp_path)  # figures/ points outside the output folder
    with pytest.raises(PermissionError, match="outside"):
        R._safe_target(str(out), os.path.join("figures", "a.png"))
    with pytest.raises(PermissionError):
        R._safe_target(str(out), "../evil.txt")
    assert R._safe_target(str(out), "ok.txt") == os.path.join(os.path.realpath(out), "ok.txt")


def test_reproduce_refuses_symlinked_out_dir(tmp_path):
    target = tmp_path / "real"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    assert main(["reproduce", "--tiny", "--out", str(tmp_path / "link"), "--no-progress"]) == 2
    assert list(target.iterdir()) == []


def test_html_escapes_text(tmp_path):
    res = R.StepResult("k", "T <b>", ["a < b & c"], {}, {}, [R.Verdict("<x>", "1", "2", False)],
                       tables=[{"caption": "c", "header": ["h"], "rows": [["<td>"]]}])
    page = render_report([res], {"dataset": {"name": "<script>"}}, str(tmp_path))
    assert "<script>" not in page and "&lt;script&gt;" in page and "a &lt; b &amp; c" in page
    assert verdict_badge(False) in page


def test_jsonable():
    out = R._jsonable({"a": float("nan"), "b": np.float32(1.5), "c": torch.tensor([1.0, float("inf")]),
                       "d": (1, 2)})
    assert out == {"a": None, "b": 1.5, "c": [1.0, None], "d": [1, 2]}


@pytest.mark.slow
def test_cnn_tiny_end_to_end(tmp_path):
    out = tmp_path / "cnn"
    assert main(["reproduce", "--arch", "cnn", "--tiny", "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["dataset"]["input_shape"] == [1, 8, 8]
    assert m["steps"]["kernel_convergence"]["metrics"]["ntk"]["slope"] < 0
    rows = m["steps"]["test_performance"]["metrics"]["rows"]
    assert rows[0]["test_accuracy"] > m["steps"]["test_performance"]["metrics"]["chance_accuracy"] + 0.2


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="dataset-fashion-mnist not installed")
def test_prepare_fashion_mnist_uses_official_split():
    cfg = R.ReproduceConfig.preset("tiny", dataset="fashion-mnist", arch="cnn")
    xtr, ytr, xte, yte, ltr, lte, info = R.prepare_data(cfg)
    assert tuple(xtr.shape[1:]) == (1, 28, 28) and info["n_total"] == 70000 and ytr.shape[1] == 10
