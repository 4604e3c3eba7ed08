"""Small-data UCI benchmark of Arora et al. (2020): NTK classifiers vs random forests and RBF-SVMs.

Protocol (per data set, identical splits for every method):

1. 4 random stratified 50/50 train/test splits (seeds 0..3).
2. Preprocessing fitted on the training half: mean imputation of missing
   numeric values, standardisation of every feature.
3. Model selection on a stratified 75/25 fit/validation split of the training
   half; the selected model is refitted on the whole training half and scored on
   the test half.

   * NTK-SVM: FC ReLU NTK (``W_std = sqrt(2)``, ``b_std = 0.1``) of depth 1..5
     hidden layers x 0..depth frozen bottom layers (``depth`` frozen = NNGP),
     ``SVC(kernel="precomputed")`` with ``C`` in ``10^-2..10^4`` (Arora et al.);
   * NTK-KRR: the same kernels, kernel regression on centred one-hot targets
     (``NTKClassifier``), ``diag_reg`` in ``10^-4..10^2`` relative to the mean diagonal;
   * RF: ``RandomForestClassifier(n_estimators=500)``, default settings, no tuning;
   * SVM: RBF ``SVC`` with ``C`` in ``10^-2..10^4`` and ``gamma`` in ``{0.01, 0.1, 1, 10} / d``.

4. Test accuracy averaged over the 4 splits; average accuracy over data sets,
   and average rank (1 = best, ties share the mean rank) over the four methods.

Data: :mod:`ntkit.data.uci` (scikit-learn's bundled sets plus the Debian packages
``weka`` and ``r-cran-mlbench``; ``--prepare`` downloads and unpacks them with
``apt-get download`` / ``dpkg-deb -x`` when they are missing).

Usage::

    python benchmarks/uci.py            # all 15 data sets, 4 splits, depth <= 5
    python benchmarks/uci.py --quick    # 5 small sets, 2 splits, depth <= 3
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
import warnings

# one BLAS/torch thread per process: on a shared 2-core machine multi-threaded small
# matrix work spins and slows everything down; the random forest uses --threads jobs
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

DEFAULT_SETS = ["iris", "wine", "breast-cancer-wisc-diag", "breast-cancer-wisc", "breast-cancer", "pima",
                "ionosphere", "glass", "german-credit", "segment", "sonar", "vehicle", "zoo", "vote", "vowel"]
QUICK_SETS = ["iris", "wine", "sonar", "glass", "zoo"]
C_GRID = [10.0 ** k for k in range(-2, 5)]
RIDGE_GRID = [10.0 ** k for k in range(-4, 3)]
GAMMA_FACTORS = [0.01, 0.1, 1.0, 10.0]
METHODS = ["NTK-SVM", "NTK-KRR", "RF", "SVM"]


def _preprocess(Xtr: np.ndarray, Xte: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import StandardScaler

    imp = SimpleImputer(strategy="mean", keep_empty_features=True).fit(Xtr)
    sc = StandardScaler().fit(imp.transform(Xtr))
    return sc.transform(imp.transform(Xtr)), sc.transform(imp.transform(Xte))


def _split(y: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    try:
        return train_test_split(idx, test_size=test_size, stratify=y, random_state=seed)
    except ValueError:  # a class too small to stratify
        return train_test_split(idx, test_size=test_size, random_state=seed)


def _krr_val_scores(K: np.ndarray, fit: np.ndarray, val: np.ndarray, y: np.ndarray) -> list[float]:
    """Validation accuracy of kernel regression on centred one-hot targets for each ridge in RIDGE_GRID."""
    classes, codes = np.unique(y[fit], return_inverse=True)
    Y = np.eye(len(classes))[codes] - 1.0 / len(classes)
    kff = K[np.ix_(fit, fit)]
    lam, V = np.linalg.eigh(kff)
    lam = np.clip(lam, 0, None)
    VtY = V.T @ Y
    kvf = K[np.ix_(val, fit)] @ V
    mean_diag = float(np.trace(kff)) / len(fit)
    out = []
    for r in RIDGE_GRID:
        f = kvf @ (VtY / (lam + r * mean_diag)[:, None])
        out.append(float(np.mean(classes[f.argmax(1)] == y[val])))
    return out


def _svm_val_scores(K: np.ndarray, fit: np.ndarray, val: np.ndarray, y: np.ndarray) -> list[float]:
    from sklearn.svm import SVC

    kff, kvf = K[np.ix_(fit, fit)], K[np.ix_(val, fit)]
    return [float(SVC(kernel="precomputed", C=c).fit(kff, y[fit]).score(kvf, y[val])) for c in C_GRID]


def run_split(X: np.ndarray, y: np.ndarray, seed: int, max_depth: int, rf_jobs: int) -> dict[str, object]:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.svm import SVC

    from ntkit.sklearn import NTKClassifier, fc_relu_kernel_grid

    tr, te = _split(y, 0.5, seed)
    Xtr, Xte = _preprocess(X[tr], X[te])
    ytr, yte = y[tr], y[te]
    fit, val = _split(ytr, 0.25, seed)
    res: dict[str, object] = {}

    # ---- NTK: every (depth, frozen) kernel on the training half in one pass
    t0 = time.perf_counter()
    best_svm = (-1.0, None)
    best_krr = (-1.0, None)
    for depth, fixed, K in fc_relu_kernel_grid(Xtr, max_depth=max_depth):
        Kn = K.numpy()
        for c, acc in zip(C_GRID, _svm_val_scores(Kn, fit, val, ytr), strict=True):
            if acc > best_svm[0]:
                best_svm = (acc, (depth, fixed, c))
        for r, acc in zip(RIDGE_GRID, _krr_val_scores(Kn, fit, val, ytr), strict=True):
            if acc > best_krr[0]:
                best_krr = (acc, (depth, fixed, r))
    t_sel = time.perf_counter() - t0
    t1 = time.perf_counter()
    d, f, c = best_svm[1]
    res["NTK-SVM"] = NTKClassifier(depth=d, n_fixed_layers=f, solver="svm", C=c).fit(Xtr, ytr).score(Xte, yte)
    res["NTK-SVM_cfg"] = (d, f, c)
    d, f, r = best_krr[1]
    res["NTK-KRR"] = NTKClassifier(depth=d, n_fixed_layers=f, diag_reg=r).fit(Xtr, ytr).score(Xte, yte)
    res["NTK-KRR_cfg"] = (d, f, r)
    res["t_NTK"] = t_sel + time.perf_counter() - t1

    # ---- random forest, untuned
    t0 = time.perf_counter()
    rf = RandomForestClassifier(n_estimators=500, random_state=seed, n_jobs=rf_jobs).fit(Xtr, ytr)
    res["RF"] = rf.score(Xte, yte)
    res["t_RF"] = time.perf_counter() - t0

    # ---- RBF SVM, C and gamma on the same validation split
    t0 = time.perf_counter()
    dim = Xtr.shape[1]
    best = (-1.0, None)
    for g in GAMMA_FACTORS:
        for c in C_GRID:
            acc = SVC(C=c, gamma=g / dim).fit(Xtr[fit], ytr[fit]).score(Xtr[val], ytr[val])
            if acc > best[0]:
                best = (acc, (c, g / dim))
    c, g = best[1]
    res["SVM"] = SVC(C=c, gamma=g).fit(Xtr, ytr).score(Xte, yte)
    res["t_SVM"] = time.perf_counter() - t0
    return res


def _ranks(table: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return np.stack([rankdata(-row) for row in table])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="5 small data sets, 2 splits, depth <= 3")
    ap.add_argument("--datasets", nargs="*", help="names from ntkit.data.uci.list_uci_datasets()")
    ap.add_argument("--splits", type=int, default=None, help="random 50/50 splits (default 4; 2 with --quick)")
    ap.add_argument("--max-depth", type=int, default=None, help="deepest NTK (default 5; 3 with --quick)")
    ap.add_argument("--data-dir", default=None, help="unpacked Debian packages (default ~/.cache/ntkit/uci)")
    ap.add_argument("--prepare", action="store_true", help="apt-get download + dpkg-deb -x the packages if missing")
    ap.add_argument("--threads", type=int, default=2, help="random-forest jobs (kernels/BLAS use 1 thread)")
    ap.add_argument("--markdown", action="store_true", help="print the table as markdown")
    args = ap.parse_args(argv)

    from ntkit.data.uci import load_uci, prepare_uci_data

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)
    names = args.datasets or (QUICK_SETS if args.quick else DEFAULT_SETS)
    splits = args.splits or (2 if args.quick else 4)
    max_depth = args.max_depth or (3 if args.quick else 5)
    if args.prepare:
        prepare_uci_data(args.data_dir)
    print(f"# ntkit UCI benchmark: {len(names)} data sets, {splits} splits, NTK depth 1..{max_depth}; "
          f"torch {torch.__version__}, 1 BLAS/torch thread, RF n_jobs={args.threads}, {platform.processor() or platform.machine()}, "
          f"load average {os.getloadavg()[0]:.1f} at start", flush=True)
    rows = []
    t_all = time.perf_counter()
    for name in names:
        try:
            ds = load_uci(name, data_dir=args.data_dir)
        except (FileNotFoundError, ImportError) as exc:
            print(f"skipping {name}: {exc}", file=sys.stderr)
            continue
        t0 = time.perf_counter()
        per = [run_split(ds.X, ds.y, s, max_depth, args.threads) for s in range(splits)]
        acc = {m: 100 * float(np.mean([p[m] for p in per])) for m in METHODS}
        times = {k: float(np.sum([p[f"t_{k}"] for p in per])) for k in ("NTK", "RF", "SVM")}
        cfg = per[0]["NTK-SVM_cfg"]
        rows.append((ds, acc, times, cfg))
        print(f"{name:24s} n={ds.n_samples:5d} d={ds.n_features:3d} c={ds.n_classes:2d}  "
              + "  ".join(f"{m} {acc[m]:5.1f}" for m in METHODS)
              + f"  | NTK cfg split0 (depth, fixed, C)={cfg}  time NTK {times['NTK']:.1f}s RF {times['RF']:.1f}s "
              f"SVM {times['SVM']:.1f}s  ({time.perf_counter() - t0:.1f}s)", flush=True)
    total = time.perf_counter() - t_all
    if not rows:
        print("no data set could be loaded; run with --prepare (needs apt-get) or see ntkit.data.uci")
        return 1
    table = np.array([[r[1][m] for m in METHODS] for r in rows])
    ranks = _ranks(table)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    head = ["dataset", "n", "d", "classes"] + [f"{m} acc" for m in METHODS]
    print()
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
    else:
        print(f"{'dataset':24s} {'n':>5s} {'d':>4s} {'cls':>4s} " + " ".join(f"{m:>8s}" for m in METHODS))
    for ds, acc, _, _ in rows:
        cells = [ds.name, str(ds.n_samples), str(ds.n_features), str(ds.n_classes)]
        cells += [f"{acc[m]:.1f}" for m in METHODS]
        if args.markdown:
            print("| " + " | ".join(cells) + " |")
        else:
            print(f"{cells[0]:24s} {cells[1]:>5s} {cells[2]:>4s} {cells[3]:>4s} "
                  + " ".join(f"{c:>8s}" for c in cells[4:]))
    avg = ["**average accuracy**" if args.markdown else "average accuracy", "", "", ""]
    avg += [f"{v:.2f}" for v in table.mean(0)]
    rk = ["**average rank**" if args.markdown else "average rank", "", "", ""]
    rk += [f"{v:.2f}" for v in ranks.mean(0)]
    for cells in (avg, rk):
        if args.markdown:
            print("| " + " | ".join(cells) + " |")
        else:
            print(f"{cells[0]:36s} " + " ".join(f"{c:>8s}" for c in cells[4:]))
    t_ntk = sum(r[2]["NTK"] for r in rows)
    t_rf = sum(r[2]["RF"] for r in rows)
    t_svm = sum(r[2]["SVM"] for r in rows)
    print(f"\ntotal {total:.1f}s (NTK {t_ntk:.1f}s incl. selection over {max_depth * (max_depth + 3) // 2} "
          f"kernels x {len(C_GRID)} C + {len(RIDGE_GRID)} ridges; RF {t_rf:.1f}s; RBF-SVM {t_svm:.1f}s; "
          f"NTK/RF time ratio {t_ntk / max(t_rf, 1e-9):.2f}), peak RSS {peak_mb:.0f} MB, "
          f"load average {os.getloadavg()[0]:.1f} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
