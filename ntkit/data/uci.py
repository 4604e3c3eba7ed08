"""Small UCI classification sets, offline: scikit-learn's bundled copies and Debian's packages.

Sources
-------
* ``sklearn``: iris, wine, breast-cancer-wisc-diag (bundled with scikit-learn);
* ``weka`` (Debian package ``weka``, ARFF files in ``usr/share/doc/weka/examples``):
  pima (``diabetes.arff``), ionosphere, glass, german-credit (``credit-g``), segment
  (``segment-challenge`` + ``segment-test``), vote, breast-cancer (Ljubljana);
* ``mlbench`` (Debian package ``r-cran-mlbench``, R data files in
  ``usr/lib/R/site-library/mlbench/data``): sonar, vehicle, zoo, vowel,
  breast-cancer-wisc (original Wisconsin).

Neither Java nor R is needed: the ``.deb`` files are only unpacked
(:func:`prepare_uci_data` runs ``apt-get download`` and ``dpkg-deb -x``; nothing
is fetched at import or by the loaders). ARFF files are parsed with
``scipy.io.arff``; ``.rda`` files need the optional ``rdata`` package
(``pip install rdata``).

Encoding
--------
Numeric attributes are kept as floats with ``NaN`` for missing values (impute
them inside your cross-validation, e.g. ``sklearn.impute.SimpleImputer``);
a nominal attribute with two values becomes one 0/1 column (``NaN`` if missing),
one with ``k > 2`` values becomes ``k`` one-hot columns (all zero if missing).
A nominal attribute whose values are all numbers (the Wisconsin
cytology grades 1-10) is read as those numbers. Identifier columns (Wisconsin
``Id``, Vowel's speaker number ``V1``) are dropped. Labels are integer codes
``0..n_classes-1`` indexing ``target_names``.

Examples
--------
>>> from ntkit.data.uci import load_uci
>>> ds = load_uci("iris")
>>> ds.X.shape, ds.n_classes
((150, 4), 3)
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import warnings
from dataclasses import dataclass, field

import numpy as np

__all__ = ["UCIDataset", "load_uci", "list_uci_datasets", "prepare_uci_data", "uci_data_dir", "INSTALL_HINT"]

_WEKA_SUBDIR = os.path.join("usr", "share", "doc", "weka", "examples")
_MLBENCH_SUBDIR = os.path.join("usr", "lib", "R", "site-library", "mlbench", "data")
_DEBIAN_PACKAGES = ("weka", "r-cran-mlbench")

INSTALL_HINT = (
    "python -c 'import ntkit.data.uci as u; u.prepare_uci_data()'  "
    "(or by hand: mkdir -p ~/.cache/ntkit/uci && cd ~/.cache/ntkit/uci && apt-get download weka r-cran-mlbench "
    "&& for f in *.deb; do dpkg-deb -x $f .; done;  alternatively `apt-get install weka r-cran-mlbench` "
    "system-wide). The .rda files also need `pip install rdata`."
)

# name -> (source, file stem(s), class column or None for the last one)
_REGISTRY: dict[str, tuple[str, tuple[str, ...], str | None]] = {
    "iris": ("sklearn", ("load_iris",), None),
    "wine": ("sklearn", ("load_wine",), None),
    "breast-cancer-wisc-diag": ("sklearn", ("load_breast_cancer",), None),
    "pima": ("weka", ("diabetes",), "class"),
    "ionosphere": ("weka", ("ionosphere",), "class"),
    "glass": ("weka", ("glass",), "Type"),
    "german-credit": ("weka", ("credit-g",), "class"),
    "segment": ("weka", ("segment-challenge", "segment-test"), "class"),
    "vote": ("weka", ("vote",), "Class"),
    "breast-cancer": ("weka", ("breast-cancer",), "Class"),
    "sonar": ("mlbench", ("Sonar",), "Class"),
    "vehicle": ("mlbench", ("Vehicle",), "Class"),
    "zoo": ("mlbench", ("Zoo",), "type"),
    "vowel": ("mlbench", ("Vowel",), "Class"),
    "breast-cancer-wisc": ("mlbench", ("BreastCancer",), "Class"),
}
_DROP_COLUMNS = {"breast-cancer-wisc": ("Id",), "vowel": ("V1",)}  # record id; speaker id


@dataclass
class UCIDataset:
    """A loaded classification set.

    Attributes
    ----------
    name : str
    X : numpy.ndarray
        ``(n, d)`` float64 features, ``NaN`` where a numeric value is missing.
    y : numpy.ndarray
        ``(n,)`` int64 class codes.
    feature_names, target_names : list of str
    source : str
        ``"sklearn"``, ``"weka"`` or ``"mlbench"``, and the file(s) read.
    """

    name: str
    X: np.ndarray
    y: np.ndarray
    feature_names: list[str] = field(default_factory=list)
    target_names: list[str] = field(default_factory=list)
    source: str = ""

    @property
    def n_samples(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])

    @property
    def n_classes(self) -> int:
        return len(self.target_names)

    @property
    def n_missing(self) -> int:
        """Number of missing numeric entries (``NaN`` in ``X``)."""
        return int(np.isnan(self.X).sum())


def list_uci_datasets(source: str | None = None) -> list[str]:
    """Names accepted by :func:`load_uci` (optionally only those of one source).

    Examples
    --------
    >>> "sonar" in list_uci_datasets()
    True
    >>> list_uci_datasets("sklearn")
    ['breast-cancer-wisc-diag', 'iris', 'wine']
    """
    if source is not None and source not in ("sklearn", "weka", "mlbench"):
        raise ValueError(f"source must be None, 'sklearn', 'weka' or 'mlbench', got {source!r}")
    return sorted(k for k, v in _REGISTRY.items() if source is None or v[0] == source)


def uci_data_dir(data_dir: str | os.PathLike | None = None) -> str:
    """The directory holding the unpacked Debian packages.

    ``data_dir`` if given, else ``$NTKIT_UCI_DIR``, else ``~/.cache/ntkit/uci``.

    Examples
    --------
    >>> uci_data_dir("/tmp/x")
    '/tmp/x'
    """
    if data_dir is not None:
        return os.fspath(data_dir)
    return os.environ.get("NTKIT_UCI_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "ntkit", "uci")


def prepare_uci_data(data_dir: str | os.PathLike | None = None, *, verbose: bool = True) -> str:
    """Download the Debian packages ``weka`` and ``r-cran-mlbench`` and unpack them (no install).

    Runs ``apt-get download weka r-cran-mlbench`` in ``data_dir`` (see
    :func:`uci_data_dir`) unless the ``.deb`` files are already there, then
    ``dpkg-deb -x`` each into it. Needs ``apt-get`` with package lists
    (run ``apt-get update`` once if it says the packages are unknown) and network
    access to a Debian mirror; about 8 MB.

    Returns
    -------
    str
        The data directory, to pass as ``data_dir`` to :func:`load_uci`.

    Examples
    --------
    >>> prepare_uci_data()  # doctest: +SKIP
    '/root/.cache/ntkit/uci'
    """
    root = uci_data_dir(data_dir)
    os.makedirs(root, exist_ok=True)
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"prepare_uci_data needs the Debian tool {tool!r}, which is not on PATH; "
                               "on other systems copy the unpacked packages into " + root)
    missing = [p for p in _DEBIAN_PACKAGES if not glob.glob(os.path.join(root, f"{p}_*.deb"))]
    if missing:
        if verbose:
            print(f"prepare_uci_data: apt-get download {' '.join(missing)} into {root}")
        res = subprocess.run(["apt-get", "download", *missing], cwd=root, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"`apt-get download {' '.join(missing)}` failed (exit {res.returncode}): "
                               f"{res.stderr.strip()[-500:]}\nIf the packages are unknown, run `apt-get update` "
                               "first.")
    for p in _DEBIAN_PACKAGES:
        debs = sorted(glob.glob(os.path.join(root, f"{p}_*.deb")))
        if not debs:
            raise RuntimeError(f"no {p}_*.deb in {root} after apt-get download")
        if verbose:
            print(f"prepare_uci_data: dpkg-deb -x {os.path.basename(debs[-1])}")
        subprocess.run(["dpkg-deb", "-x", debs[-1], root], check=True, capture_output=True)
    return root


def load_uci(name: str, *, data_dir: str | os.PathLike | None = None) -> UCIDataset:
    """Load one data set by name (see :func:`list_uci_datasets`).

    Parameters
    ----------
    name : str
        E.g. ``"iris"``, ``"pima"``, ``"sonar"``.
    data_dir : path, optional
        Where :func:`prepare_uci_data` unpacked the Debian packages; the loader
        also looks in the system locations of installed packages (``/``).

    Raises
    ------
    FileNotFoundError
        The Debian files are not there; the message says how to get them.
    ImportError
        An ``.rda`` set is asked for and ``rdata`` is not installed.

    Examples
    --------
    >>> ds = load_uci("wine")
    >>> ds.n_samples, ds.n_features, ds.n_classes
    (178, 13, 3)
    """
    if name not in _REGISTRY:
        raise ValueError(f"name must be one of {list_uci_datasets()}, got {name!r}")
    source, stems, target = _REGISTRY[name]
    if source == "sklearn":
        return _load_sklearn(name, stems[0])
    if source == "weka":
        paths = [_locate(data_dir, _WEKA_SUBDIR, stem, (".arff", ".arff.gz"), "weka") for stem in stems]
        X, y, fnames, tnames = _read_arff_files(paths, target)
    else:
        path = _locate(data_dir, _MLBENCH_SUBDIR, stems[0], (".rda", ".RData"), "r-cran-mlbench")
        X, y, fnames, tnames = _read_rda(path, stems[0], target, _DROP_COLUMNS.get(name, ()))
    return UCIDataset(name=name, X=X, y=y, feature_names=fnames, target_names=tnames,
                      source=f"{source}: {', '.join(stems)}")


# ---- helpers -----------------------------------------------------------------


def _load_sklearn(name: str, fn: str) -> UCIDataset:
    try:
        from sklearn import datasets
    except ImportError as exc:  # pragma: no cover - sklearn is a test dependency
        raise ImportError(f"load_uci({name!r}) needs scikit-learn: pip install scikit-learn") from exc
    b = getattr(datasets, fn)()
    return UCIDataset(name=name, X=np.asarray(b.data, dtype=np.float64), y=np.asarray(b.target, dtype=np.int64),
                      feature_names=[str(f) for f in b.feature_names],
                      target_names=[str(t) for t in b.target_names], source=f"sklearn: {fn}")


def _locate(data_dir: str | os.PathLike | None, subdir: str, stem: str, exts: tuple[str, ...], pkg: str) -> str:
    roots = [uci_data_dir(data_dir), os.sep]
    for root in roots:
        for ext in exts:
            p = os.path.join(root, subdir, stem + ext)
            if os.path.isfile(p):
                return p
    raise FileNotFoundError(
        f"{stem}{exts[0]} (Debian package {pkg}) not found under {roots[0]} or the system paths; "
        f"get it with: {INSTALL_HINT}"
    )


def _read_arff_files(paths: list[str], target: str | None) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    import gzip
    import io

    from scipy.io import arff

    tables = []
    meta = None
    for p in paths:
        if p.endswith(".gz"):
            with gzip.open(p, "rt", encoding="utf-8", errors="replace") as fh:
                data, meta_p = arff.loadarff(io.StringIO(fh.read()))
        else:
            data, meta_p = arff.loadarff(p)
        if meta is not None and meta_p.names() != meta.names():
            raise ValueError(f"{p} has different attributes from {paths[0]}")
        meta = meta_p
        tables.append(data)
    data = np.concatenate(tables)
    names = list(meta.names())
    target = target if target is not None else names[-1]
    columns: list[tuple[str, str, object, tuple[str, ...]]] = []
    for nm in names:
        kind, values = meta[nm]
        col = data[nm]
        if kind == "nominal":
            col = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in col], dtype=object)
            columns.append((nm, "nominal", col, tuple(values)))
        else:
            columns.append((nm, "numeric", np.asarray(col, dtype=np.float64), ()))
    return _encode(columns, target)


def _read_rda(path: str, obj: str, target: str | None, drop: tuple[str, ...]
              ) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    try:
        import rdata
    except ImportError as exc:
        raise ImportError(f"reading {os.path.basename(path)} needs the optional package 'rdata': "
                          "pip install rdata") from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Unknown encoding. Assumed ASCII." for these old files
        frames = rdata.read_rda(path)
    if obj not in frames:
        raise ValueError(f"{path} does not hold a data frame named {obj!r} (it holds {list(frames)})")
    df = frames[obj]
    names = [str(c) for c in df.columns]
    target = target if target is not None else names[-1]
    columns = []
    for nm in names:
        if nm in drop:
            continue
        s = df[nm]
        if hasattr(s, "cat"):
            cats = tuple(str(c) for c in s.cat.categories)
            col = np.array([None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
                            for v in s.astype(object)], dtype=object)
            columns.append((nm, "nominal", col, cats))
        elif s.dtype == bool or str(s.dtype) == "boolean":
            col = np.array([np.nan if v is None or v is np.nan else float(bool(v)) for v in s.astype(object)])
            columns.append((nm, "numeric", col, ()))
        else:
            columns.append((nm, "numeric", np.asarray(s.astype("float64"), dtype=np.float64), ()))
    return _encode(columns, target)


def _is_missing(v: object) -> bool:
    return v is None or v == "?" or (isinstance(v, float) and np.isnan(v))


def _as_numbers(values: tuple[str, ...]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


def _encode(columns: list[tuple[str, str, object, tuple[str, ...]]], target: str
            ) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    names = [c[0] for c in columns]
    if target not in names:
        raise ValueError(f"class column {target!r} not found among {names}")
    feats: list[np.ndarray] = []
    fnames: list[str] = []
    y = None
    tnames: list[str] = []
    for nm, kind, col, values in columns:
        if nm == target:
            if kind != "nominal":
                raise ValueError(f"class column {target!r} is not nominal")
            present = [v for v in values if any(c == v for c in col)]
            index = {v: i for i, v in enumerate(present)}
            if any(_is_missing(v) for v in col):
                raise ValueError(f"class column {target!r} has missing values")
            y = np.array([index[v] for v in col], dtype=np.int64)
            tnames = [str(v) for v in present]
            continue
        if kind == "numeric":
            feats.append(np.asarray(col, dtype=np.float64)[:, None])
            fnames.append(nm)
            continue
        missing = np.array([_is_missing(v) for v in col])
        numeric_values = _as_numbers(values)
        if numeric_values is not None:
            lookup = dict(zip(values, numeric_values, strict=True))
            f = np.array([np.nan if m else lookup[v] for v, m in zip(col, missing, strict=True)])
            feats.append(f[:, None])
            fnames.append(nm)
        elif len(values) == 2:
            f = np.where(missing, np.nan, np.array([v == values[1] for v in col], dtype=np.float64))
            feats.append(f[:, None])
            fnames.append(f"{nm}={values[1]}")
        else:
            oh = np.stack([np.array([v == val for v in col], dtype=np.float64) for val in values], axis=1)
            feats.append(oh)
            fnames.extend(f"{nm}={val}" for val in values)
    X = np.concatenate(feats, axis=1)
    assert y is not None
    return X, y, fnames, tnames
