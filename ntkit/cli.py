"""The ``ntkit`` command line: ``ntkit reproduce`` and ``ntkit kernel``.

Exit codes: 0 success; 1 unexpected error; 2 usage error or bad architecture
spec; 3 missing input file or data set not installed; 130 interrupted (a
resumable ``ntkit kernel`` run keeps its finished tiles). Errors are printed as
one line on stderr; ``--debug`` shows the traceback.

Examples
--------
>>> from ntkit.cli import main
>>> main(["kernel", "--arch", "Nope(1)", "--x", "x.npy", "--out", "k.npz"])  # doctest: +SKIP
2
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_MISSING", "EXIT_INTERRUPTED"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_MISSING, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class CLIError(Exception):
    """An error with a user-facing one-line message and an exit code."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


_MAIN_EPILOG = """\
examples:
  ntkit reproduce                       # the whole story on scikit-learn's digits (< 10 min on 2 cores)
  ntkit reproduce --quick --out out     # a smaller run (< 2 min); open out/report.html
  ntkit reproduce --dataset fashion-mnist
  ntkit kernel --arch "Dense(512); Relu; Dense(1)" --x x.npy --get ntk --out k.npz

Run `ntkit COMMAND --help` for the options of a command.
"""

_REPRODUCE_EPILOG = """\
what it does (each step has a section in the report):
  1. analytic NNGP/NTK vs empirical kernels of finite networks of growing width (slope ~ -1/2)
  2. networks of several widths trained by full-batch GD on MSE vs the closed-form NTK dynamics
  3. lazy training: kernel and weight movement vs width
  4. NTK spectrum and per-eigendirection learning speed
  5. test accuracy/MSE of NTK regression, NNGP regression and the trained networks
  6. generalisation bound sqrt(2 y^T K^-1 y / n) and the laziness ratio kappa

examples:
  ntkit reproduce --quick --out out && xdg-open out/report.html
  ntkit reproduce --arch cnn --quick
  ntkit reproduce --dataset fashion-mnist --n-train 1000
  ntkit reproduce --dataset mydata.npz   # arrays 'x' (n, d) or (n, C, H, W) and integer labels 'y'
  ntkit reproduce --widths 64 256 1024 --train-widths 128 1024 --seed 3

Fashion-MNIST is read from Debian's package files: apt-get update && apt-get install -y dataset-fashion-mnist
Outputs: OUT/report.html (self-contained), OUT/metrics.json (every number), OUT/figures/*.png.
"""

_KERNEL_EPILOG = """\
SPEC (inline or a file; see docs/cli.md):
  text:  "Dense(512, W_std=1.5, b_std=0.05); Relu; Dense(1)"
         "Conv(64, (3, 3), padding='SAME'); Relu; Flatten; Dense(1)"
  JSON:  [{"type": "Dense", "args": [512], "W_std": 1.5}, "Relu", {"type": "Dense", "args": [1]}]
  TOML:  [[layer]] tables with type = "Dense", args = [512], W_std = 1.5, ...
Inputs: .npy array, or .npz with an array 'x'; rows are examples ((n, d) or channels-first (n, C, H, W)).

examples:
  ntkit kernel --arch "Dense(512); Relu; Dense(1)" --x train.npy --get nngp,ntk --out k.npz
  ntkit kernel --arch arch.toml --x test.npy --x2 train.npy --out k_test_train/ --memory-budget 2GB

The computation is tiled and resumable: finished tiles are kept on disk (OUT.parts/ for a .npz output, or
the OUT directory itself), so after a crash or Ctrl-C the same command continues where it stopped.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2
        raise CLIError(f"{self.prog}: {message} (see `{self.prog} --help`)", EXIT_USAGE)


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``ntkit`` command (exposed for docs and tests)."""
    from . import __version__

    fmt = argparse.RawDescriptionHelpFormatter
    p = _Parser(prog="ntkit", description="ntkit — Neural Tangent Kernel toolkit for PyTorch.",
                epilog=_MAIN_EPILOG, formatter_class=fmt)
    p.add_argument("--version", action="version", version=f"ntkit {__version__}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    r = sub.add_parser("reproduce", help="measure the NTK theory's claims on real data and write an HTML report",
                       description="Measure the seeds' claims (wide nets trained by GD = kernel regression with "
                                   "the NTK) on real data; write an HTML report, metrics.json and figures.",
                       epilog=_REPRODUCE_EPILOG, formatter_class=fmt)
    r.add_argument("--dataset", default="digits",
                   help="digits (default, bundled with scikit-learn), fashion-mnist (Debian package files), "
                        "or a .npz/.npy file with arrays 'x' and 'y'")
    r.add_argument("--arch", choices=("fc", "cnn"), default="fc",
                   help="fc: two hidden ReLU Dense layers (default); cnn: two 3x3 ReLU convolutions + Dense")
    r.add_argument("--quick", action="store_true", help="smaller run (under 2 minutes on 2 cores)")
    r.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # for tests
    r.add_argument("--out", default="ntkit-report", help="output folder (created; default: ./ntkit-report)")
    r.add_argument("--seed", type=int, default=0, help="random seed (data split and network draws)")
    r.add_argument("--n-train", type=_positive_int, help="training examples (default 500; 200 with --quick)")
    r.add_argument("--n-test", type=_positive_int, help="test examples (default 300)")
    r.add_argument("--widths", type=_positive_int, nargs="+", help="widths for the kernel convergence (step 1)")
    r.add_argument("--train-widths", type=_positive_int, nargs="+", help="widths of the trained networks")
    r.add_argument("--steps", type=_positive_int, help="gradient-descent steps (default 300; 150 with --quick)")
    r.add_argument("--threads", type=_positive_int,
                   help="torch CPU threads (default: torch's choice; 1 is faster on a busy shared machine)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    k = sub.add_parser("kernel", help="compute infinite-width NNGP/NTK kernels of data files (tiled, resumable)",
                       description="Infinite-width NNGP/NTK of an architecture SPEC between the rows of data "
                                   "files, computed in memory-budgeted tiles that survive a crash.",
                       epilog=_KERNEL_EPILOG, formatter_class=fmt)
    k.add_argument("--arch", required=True, metavar="SPEC", help="architecture: inline SPEC or a .json/.toml/.txt file")
    k.add_argument("--x", required=True, metavar="FILE", help="inputs x1 (.npy, or .npz with array 'x')")
    k.add_argument("--x2", metavar="FILE", help="second inputs (default: x1, a symmetric kernel)")
    k.add_argument("--get", default="nngp,ntk", help="comma-separated: nngp, ntk (default both)")
    k.add_argument("--out", required=True, metavar="PATH", help="FILE.npz, or a directory (gets nngp.npy/ntk.npy)")
    k.add_argument("--batch-size", type=_positive_int, help="tile side (rows/columns per tile)")
    k.add_argument("--memory-budget", default="1GB", help="working memory per tile, e.g. 512MB (default 1GB)")
    k.add_argument("--dtype", choices=("float32", "float64"), default="float64", help="compute dtype (default float64)")
    k.add_argument("--overwrite", action="store_true", help="replace an existing complete .npz output")
    k.add_argument("--no-progress", action="store_true", help="no progress bar")
    k.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


# ---- reproduce ---------------------------------------------------------------------------------


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from .report.reproduce import ReproduceConfig, run_reproduce

    if args.quick and args.tiny:
        raise CLIError("choose one of --quick and --tiny", EXIT_USAGE)
    preset = "tiny" if args.tiny else "quick" if args.quick else "full"
    try:
        cfg = ReproduceConfig.preset(
            preset, arch=args.arch, dataset=args.dataset, seed=args.seed, n_train=args.n_train,
            n_test=args.n_test, widths=args.widths, train_widths=args.train_widths, steps=args.steps)
        cfg.validate()
    except ValueError as exc:
        raise CLIError(f"ntkit reproduce: {exc}", EXIT_USAGE) from exc
    if args.dataset not in ("digits", "fashion-mnist", "fashion_mnist", "fmnist") and not os.path.isfile(args.dataset):
        raise CLIError(f"data set file not found: {args.dataset} (use digits, fashion-mnist, or a .npz/.npy path)",
                       EXIT_MISSING)
    out = args.out
    if os.path.islink(out):
        raise CLIError(f"refusing to write into {out}: it is a symbolic link", EXIT_USAGE)
    if os.path.exists(out) and not os.path.isdir(out):
        raise CLIError(f"--out {out} exists and is not a folder", EXIT_USAGE)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    log(f"ntkit reproduce: preset {preset}, data set {cfg.dataset}, arch {cfg.arch}, output {out}")
    metrics = run_reproduce(cfg, out, progress=not args.no_progress, log=log)
    n_ok = sum(1 for s in metrics["steps"].values() for v in s["verdicts"] if v["agrees"] is True)
    n_all = sum(1 for s in metrics["steps"].values() for v in s["verdicts"] if v["agrees"] is not None)
    print(f"{n_ok}/{n_all} checks agree with the theory; report: {os.path.join(out, 'report.html')} "
          f"({time.perf_counter() - t0:.0f} s)")
    return EXIT_OK


# ---- kernel -------------------------------------------------------------------------------------


def _load_x(path: str, name: str) -> Any:
    from .data.files import load_array_file

    x, _ = load_array_file(path)
    return x


def _cmd_kernel(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ._tilestore import TileStore, fingerprint_array
    from .layers.base import Layer
    from .spec import load_spec
    from .tiling import plan_blocks, progress_bar

    gets = tuple(g.strip() for g in args.get.split(",") if g.strip())
    if not gets or any(g not in ("nngp", "ntk") for g in gets) or len(set(gets)) != len(gets):
        raise CLIError(f"--get must be nngp, ntk or nngp,ntk; got {args.get!r}", EXIT_USAGE)
    arch = load_spec(args.arch)
    if not isinstance(arch, Layer):
        raise CLIError("--arch did not describe an architecture", EXIT_USAGE)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    npd = np.float32 if args.dtype == "float32" else np.float64
    x1 = np.ascontiguousarray(_load_x(args.x, "--x"), dtype=npd)
    x2 = None if args.x2 is None else np.ascontiguousarray(_load_x(args.x2, "--x2"), dtype=npd)
    if x2 is not None and x2.shape[1:] != x1.shape[1:]:
        raise CLIError(f"--x2 rows have shape {x2.shape[1:]} but --x rows have {x1.shape[1:]}", EXIT_USAGE)
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    in_shape = tuple(x1.shape[1:])
    try:
        out_shape = arch.output_shape(in_shape)
    except (ValueError, TypeError) as exc:
        raise CLIError(f"--arch does not fit inputs of shape {in_shape}: {exc}", EXIT_USAGE) from exc
    if isinstance(out_shape, list) or len(out_shape) != 1:
        raise CLIError(f"the architecture's output has shape {out_shape}; end it with a flat layer "
                       "(e.g. Flatten; Dense(1) or GlobalAvgPool; Dense(1)) to get an (n1, n2) kernel", EXIT_USAGE)
    try:
        per_pair, _ = arch._bytes_per_pair(in_shape, arch.needs_full_spatial(False), x1.itemsize)
        b1, b2 = plan_blocks(n1, n2, per_pair, args.memory_budget, args.batch_size, bytes_per_row=per_pair)
    except (ValueError, TypeError) as exc:
        raise CLIError(f"ntkit kernel: {exc}", EXIT_USAGE) from exc
    symmetric = x2 is None
    if symmetric:
        b1 = b2 = min(b1, b2)
    out = args.out
    is_npz = out.lower().endswith(".npz")
    store_dir = out + ".parts" if is_npz else out
    if is_npz and os.path.exists(out) and not args.overwrite:
        raise CLIError(f"{out} already exists; pass --overwrite to replace it", EXIT_USAGE)
    if os.path.islink(store_dir) or (os.path.exists(store_dir) and not os.path.isdir(store_dir)):
        raise CLIError(f"cannot use {store_dir} as the tile folder (not a plain directory)", EXIT_USAGE)
    fp = {"spec": repr(arch), "x1": fingerprint_array(x1), "x2": None if x2 is None else fingerprint_array(x2),
          "get": list(gets)}
    from ._tilestore import TileStoreMismatch

    try:
        store = TileStore.open(store_dir, names=list(gets), shape=(n1, n2), dtype=args.dtype, blocks=(b1, b2),
                               symmetric=symmetric, fingerprint=fp)
    except TileStoreMismatch as exc:
        raise CLIError(str(exc), EXIT_USAGE) from exc
    if store.n_done:
        print(f"resuming: {store.n_done}/{store.n_tiles} tiles already done in {store_dir}", file=sys.stderr)
    x1t = torch.from_numpy(x1)
    x2t = None if x2 is None else torch.from_numpy(x2)
    pending = store.pending()
    try:
        for t in progress_bar(pending, total=len(pending), enabled=not args.no_progress, desc="kernel tiles"):
            s1, s2 = store.slices(t)
            if symmetric and s1 == s2:
                k = arch.kernel(x1t[s1], get=gets, dtype=dtype)
            else:
                k = arch.kernel(x1t[s1], (x1t if x2t is None else x2t)[s2], get=gets, dtype=dtype)
            vals = {g: getattr(k, g).detach().cpu().numpy() for g in gets}
            if symmetric and s1 == s2:  # a diagonal tile of a symmetric kernel: make it exactly symmetric
                vals = {g: (v + v.T) / 2 if v.ndim == 2 else v for g, v in vals.items()}
            for g, v in vals.items():
                if v.ndim != 2:
                    raise CLIError(f"the architecture's {g} has shape {v.shape}; it must end with a flat output",
                                   EXIT_USAGE)
            store.write(t, vals)
    except KeyboardInterrupt:
        store.close()
        raise CLIError(f"interrupted: {store.n_done}/{store.n_tiles} tiles are saved in {store_dir}; "
                       "run the same command again to resume", EXIT_INTERRUPTED) from None
    store.close()
    if is_npz:
        parent = os.path.dirname(os.path.abspath(out))
        fd, tmp = tempfile.mkstemp(prefix=".ntkit-", suffix=".npz", dir=parent)
        os.close(fd)
        try:
            arrays = {g: np.asarray(store.array(g)) for g in gets}
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays, spec=np.array(repr(arch)))
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600 files
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        shutil.rmtree(store_dir)
        where = out
    else:
        where = ", ".join(os.path.join(store_dir, f"{g}.npy") for g in gets)
    print(f"wrote {'/'.join(gets)} kernel{'s' if len(gets) > 1 else ''} of shape ({n1}, {n2}) to {where}")
    return EXIT_OK


# ---- entry point --------------------------------------------------------------------------------


def _classify(exc: BaseException) -> int:
    from .spec import SpecError

    if isinstance(exc, CLIError):
        return exc.code
    if isinstance(exc, SpecError):
        return EXIT_USAGE
    if isinstance(exc, FileNotFoundError):
        return EXIT_MISSING
    if isinstance(exc, ImportError) and "scikit-learn" in str(exc):
        return EXIT_MISSING
    return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ntkit`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    Examples
    --------
    >>> main(["--version"])  # doctest: +SKIP
    ntkit 0.1.0.dev0
    0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0) if isinstance(exc.code, int | None) else EXIT_USAGE
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        if args.command == "reproduce":
            return _cmd_reproduce(args)
        return _cmd_kernel(args)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the CLI boundary: one line, an exit code
        if debug:
            traceback.print_exc()
        msg = " ".join(str(exc).split()) or type(exc).__name__
        if not isinstance(exc, CLIError | FileNotFoundError | ValueError | TypeError):
            msg = f"{type(exc).__name__}: {msg}"
        hint = "" if debug else " (run with --debug for the traceback)"
        code = _classify(exc)
        print(f"error: {msg}{hint if code == EXIT_ERROR else ''}", file=sys.stderr)
        return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
