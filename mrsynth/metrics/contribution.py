"""Sequence-contribution ranking of the Seq2Seq paper (Medical Image Analysis 2023).

From one-to-one synthesis results, for ``N`` sequences:

1. per (source ``i``, target ``j``) pair, the mean PSNR, SSIM and LPIPS over its records;
2. each metric is z-scored over all off-diagonal pairs present:
   ``z = (m - mean) / std`` (population std, ``ddof=0``; ``z = 0`` when all values are equal);
3. ``A[i, j] = zPSNR + zSSIM - zLPIPS`` (higher is easier to synthesise), ``A = 0`` on the
   diagonal and for pairs without records;
4. ``C_t(i) = (1/N) sum_j A[i, j]``: how well ``i`` generates the other sequences;
   ``C_d(i) = -(1/N) sum_j A[j, i]``: how hard ``i`` is to generate from the others, i.e. how
   much information only ``i`` holds. ``N`` counts the diagonal, as in the paper.

**LPIPS is optional**: if any off-diagonal record lacks an ``lpips`` value (key absent,
``None`` or NaN, e.g. because the AlexNet weights are unavailable), the LPIPS term is dropped
for *every* pair and ``A = zPSNR + zSSIM``; the result's ``metrics_used`` says which metrics
entered ``A``. Rankings with and without LPIPS are therefore not directly comparable.

Difference from the reference script: it standardises with the mean and std of the raw
per-record values *including* the identity (``i -> i``) records; here each pair counts once
(its mean) and identity records are ignored, so the trivial ``i -> i`` scores neither
dominate the spread nor weight pairs by how many records they have.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..io import atomic_path
from ..sequences import SEQUENCES

__all__ = ["pair_means", "contribution_matrix", "contribution_ranking", "write_contribution"]

_METRICS = ("psnr", "ssim", "lpips")
_SIGN = {"psnr": 1.0, "ssim": 1.0, "lpips": -1.0}  # LPIPS: lower is better


def _missing(v) -> bool:
    return v is None or (isinstance(v, (float, np.floating)) and math.isnan(v))


def _default_order(names: Iterable[str]) -> list[str]:
    """Known sequences in :data:`SEQUENCES` order, then any others alphabetically."""
    names = set(names)
    known = [s for s in SEQUENCES if s in names]
    return known + sorted(names - set(known))


def pair_means(records: Iterable[Mapping], sequences: Sequence[str] | None = None) -> dict:
    """Average the records of every off-diagonal (source, target) pair.

    Args:
        records: dicts with keys ``source``, ``target`` (sequence names), ``psnr``, ``ssim``
            and optionally ``lpips``. Identity records (``source == target``) are ignored.
        sequences: the sequence names to rank, in output order; ``None`` takes those present in
            the records (in :data:`~mrsynth.sequences.SEQUENCES` order). Names are matched
            case-insensitively.

    Returns:
        ``{"sequences": [names], "pairs": {(i, j): {"psnr": m, "ssim": m, "lpips": m or None,
        "n": count}}}`` with ``i``, ``j`` indices into ``sequences``.

    Raises:
        DataError: a record lacks a key, names a sequence not in ``sequences``, has several
            sources (many-to-one results do not enter this ranking), or a non-finite PSNR/SSIM;
            no off-diagonal record; a sequence of ``sequences`` appears in no record.
    """
    recs = list(records)
    parsed = []
    for k, r in enumerate(recs):
        try:
            src, tgt = r["source"], r["target"]
            vals = {"psnr": r["psnr"], "ssim": r["ssim"], "lpips": r.get("lpips")}
        except (KeyError, TypeError, AttributeError):
            raise DataError(f"contribution record {k} needs keys source, target, psnr, ssim: got {r!r}") from None
        if not isinstance(src, str) or not isinstance(tgt, str):
            raise DataError(f"contribution record {k}: source and target must be single sequence names "
                            f"(one-to-one results), got {src!r} -> {tgt!r}")
        for m in ("psnr", "ssim"):
            if _missing(vals[m]) or not math.isfinite(float(vals[m])):
                raise DataError(f"contribution record {k} ({src} -> {tgt}): {m} is {vals[m]!r}, must be finite")
        parsed.append((src.lower(), tgt.lower(), vals))

    if sequences is None:
        names = _default_order({s for s, _, _ in parsed} | {t for _, t, _ in parsed})
    else:
        names = [str(s) for s in sequences]
    index = {n.lower(): i for i, n in enumerate(names)}
    if len(index) != len(names):
        raise DataError(f"duplicate sequence names in {names}")

    sums: dict[tuple[int, int], dict] = {}
    seen = set()
    for k, (src, tgt, vals) in enumerate(parsed):
        for s in (src, tgt):
            if s not in index:
                raise DataError(f"contribution record {k}: sequence {s!r} is not one of {names}")
        i, j = index[src], index[tgt]
        seen.update((i, j))
        if i == j:
            continue
        acc = sums.setdefault((i, j), {"psnr": 0.0, "ssim": 0.0, "lpips": 0.0, "n": 0, "lpips_missing": False})
        acc["psnr"] += float(vals["psnr"])
        acc["ssim"] += float(vals["ssim"])
        if _missing(vals["lpips"]):
            acc["lpips_missing"] = True
        else:
            acc["lpips"] += float(vals["lpips"])
        acc["n"] += 1
    if not sums:
        raise DataError("no off-diagonal (source != target) record: nothing to rank")
    absent = [names[i] for i in range(len(names)) if i not in seen]
    if absent:
        raise DataError(f"sequence(s) {absent} appear in no record; pass only the evaluated sequences")

    pairs = {}
    for key, acc in sums.items():
        n = acc["n"]
        pairs[key] = {
            "psnr": acc["psnr"] / n,
            "ssim": acc["ssim"] / n,
            "lpips": None if acc["lpips_missing"] else acc["lpips"] / n,
            "n": n,
        }
    return {"sequences": names, "pairs": pairs}


def _zscore(values: np.ndarray) -> np.ndarray:
    """``(v - mean) / std`` with the population std; zeros when the values do not vary."""
    mu, sd = values.mean(), values.std()
    if not sd > 1e-12 * max(1.0, abs(mu)):
        return np.zeros_like(values)
    return (values - mu) / sd


def _matrix(records, sequences):
    pm = pair_means(records, sequences)
    names, pairs = pm["sequences"], pm["pairs"]
    keys = sorted(pairs)
    metrics_used = tuple(m for m in _METRICS if m != "lpips" or all(pairs[k]["lpips"] is not None for k in keys))
    a = np.zeros((len(names), len(names)), dtype=np.float64)
    rows, cols = np.array([k[0] for k in keys]), np.array([k[1] for k in keys])
    for m in metrics_used:
        a[rows, cols] += _SIGN[m] * _zscore(np.array([pairs[k][m] for k in keys], dtype=np.float64))
    return a, names, metrics_used, pm


def contribution_matrix(records: Iterable[Mapping], sequences: Sequence[str] | None = None) -> np.ndarray:
    """The paper's pair matrix ``A`` of shape ``(N, N)``, rows = source, columns = target.

    ``A[i, j] = zPSNR + zSSIM - zLPIPS`` of pair ``i -> j`` (z-scores over the off-diagonal
    pairs present; the LPIPS term is dropped when any LPIPS is missing, see the module notes and
    ``contribution_ranking(...)["metrics_used"]``); 0 on the diagonal and for absent pairs.
    Arguments as in :func:`pair_means`.
    """
    return _matrix(records, sequences)[0]


def contribution_ranking(records: Iterable[Mapping], sequences: Sequence[str] | None = None) -> dict:
    """Rank sequences by the Seq2Seq contribution scores ``C_t`` and ``C_d``.

    Args:
        records: as in :func:`pair_means` (e.g. the rows of an evaluation's ``metrics.csv``).
        sequences: names to rank (``N`` of them, the diagonal counts in the means); ``None``:
            those present in the records.

    Returns:
        dict with
          ``sequences`` (list of N names), ``A`` (``(N, N)`` array),
          ``C_t`` (``(N,)``: mean of row ``i`` of ``A``; how well ``i`` generates the others),
          ``C_d`` (``(N,)``: minus the mean of column ``i``; how hard ``i`` is to generate),
          ``rank_t`` / ``rank_d`` (names sorted by descending ``C_t`` / ``C_d``; ties keep the
          order of ``sequences``), ``metrics_used`` (tuple of the metrics in ``A``),
          ``n_pairs`` (off-diagonal pairs with records) and ``pairs`` (the per-pair means).
    """
    a, names, used, pm = _matrix(records, sequences)
    n = len(names)
    c_t = a.sum(axis=1) / n
    c_d = -a.sum(axis=0) / n
    order_t = sorted(range(n), key=lambda i: -c_t[i])
    order_d = sorted(range(n), key=lambda i: -c_d[i])
    return {
        "sequences": list(names),
        "A": a,
        "C_t": c_t,
        "C_d": c_d,
        "rank_t": [names[i] for i in order_t],
        "rank_d": [names[i] for i in order_d],
        "metrics_used": used,
        "n_pairs": len(pm["pairs"]),
        "pairs": {(names[i], names[j]): v for (i, j), v in sorted(pm["pairs"].items())},
    }


def write_contribution(result: Mapping, csv_path, png_path=None) -> tuple[Path, Path | None]:
    """Write a :func:`contribution_ranking` result as a CSV table and optionally a bar chart.

    The CSV has the header ``sequence,C_t,C_d,rank_t,rank_d`` and one row per sequence, where
    ``rank_t`` / ``rank_d`` are 1-based positions (1 = highest score). The PNG shows ``C_t`` and
    ``C_d`` side by side per sequence (matplotlib, Agg canvas). Both are written atomically.

    Returns:
        ``(csv_path, png_path or None)`` as :class:`~pathlib.Path`.
    """
    names = list(result["sequences"])
    c_t, c_d = np.asarray(result["C_t"], dtype=float), np.asarray(result["C_d"], dtype=float)
    pos_t = {s: k + 1 for k, s in enumerate(result["rank_t"])}
    pos_d = {s: k + 1 for k, s in enumerate(result["rank_d"])}
    csv_path = Path(csv_path)
    with atomic_path(csv_path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["sequence", "C_t", "C_d", "rank_t", "rank_d"])
            for i, s in enumerate(names):
                w.writerow([s, f"{c_t[i]:.10g}", f"{c_d[i]:.10g}", pos_t[s], pos_d[s]])
    if png_path is None:
        return csv_path, None

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    png_path = Path(png_path)
    fig = Figure(figsize=(1.2 * len(names) + 2.5, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(names))
    ax.bar(x - 0.2, c_t, width=0.4, label="C_t (generates others)")
    ax.bar(x + 0.2, c_d, width=0.4, label="C_d (hard to generate)")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(names)
    ax.set_ylabel("score")
    ax.set_title("Sequence contribution (" + " + ".join(result.get("metrics_used", ())) + ")")
    ax.legend(fontsize="small")
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    return csv_path, png_path
