"""Source/target sampling for training and validation of any-to-any synthesis.

A loaded case holds one image per *available* sequence (``(1, H, W, D)``, axial slices along
the last axis). These transforms cut training samples from it:

- :class:`RandSequencePaird` draws a source and a target independently among the available
  sequences (so incomplete cases train too) and cuts matching 2D / 2.5D slabs or keeps whole
  volumes (3D);
- :class:`SequencePairsd` lists every ordered (source, target) pair at fixed slices, for
  validation.

Output keys follow MONAI's supervised convention: ``image`` (the source) and ``label`` (the
target), each ``(num_slices, H, W)`` or ``(1, H, W, D)``; ``src_code`` and ``tgt_code`` (the
sequences' indices, i.e. the target codes), ``src_name``, ``tgt_name``, ``slice`` (the central
slice index, -1 for volumes) and ``case``. Samples are plain tensors, so batches mix sources and
targets freely, and ``PrepareBatchExtraInput("tgt_code")`` feeds ``network(image, tgt_code)``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable

from ..errors import DataError

__all__ = ["RandSequencePaird", "SequencePairsd", "RandSourceSubsetd", "SourceSubsetsd", "extract_slab", "slab_indices"]


def slab_indices(center: int, num_slices: int, depth: int) -> list[int]:
    """Indices of ``num_slices`` adjacent slices centred on ``center``, replicated at the edges."""
    half = num_slices // 2
    return [min(max(center + o, 0), depth - 1) for o in range(-half, num_slices - half)]


def extract_slab(volume: torch.Tensor, center: int, num_slices: int) -> torch.Tensor:
    """Cut ``num_slices`` axial slices around ``center`` from ``volume`` ``(1, H, W, D)`` as
    channels ``(num_slices, H, W)``; ``num_slices == 0`` returns the whole volume ``(1, H, W, D)``."""
    v = torch.as_tensor(volume)
    if num_slices == 0:
        return v.clone()
    idx = slab_indices(center, num_slices, v.shape[-1])
    return v[0][..., idx].permute(2, 0, 1).contiguous()


def _slice_window(depth: int, central_slices: int | None) -> tuple[int, int]:
    if not central_slices or central_slices >= depth:
        return 0, depth
    start = (depth - central_slices) // 2
    return start, start + central_slices


class _PairBase(MapTransform):
    def __init__(self, sequences: Sequence[str], num_slices: int = 3, central_slices: int | None = None, extra=()):
        super().__init__(list(sequences), allow_missing_keys=True)
        if num_slices < 0:
            raise ValueError(f"num_slices must be >= 0 (0 = whole volume), got {num_slices}")
        self.sequences = [s.lower() for s in sequences]
        self.num_slices = int(num_slices)
        self.central_slices = central_slices
        self.extra = tuple(extra)

    def _window(self, d) -> tuple[list[int], int, int]:
        """The indices of the available sequences and the slice window ``[lo, hi)``."""
        avail = [i for i, s in enumerate(self.sequences) if s in d]
        if not avail:
            raise DataError(f"none of the sequences {self.sequences} is present", d.get("case"))
        depth = torch.as_tensor(d[self.sequences[avail[0]]]).shape[-1]
        return (avail, *_slice_window(depth, self.central_slices))

    def _fixed_centers(self, lo: int, hi: int) -> list[int]:
        """``slices_per_case`` evenly spaced slices inside ``[lo, hi)`` (``[-1]`` for volumes)."""
        if not self.num_slices:
            return [-1]
        return np.linspace(lo, hi - 1, self.slices_per_case + 2)[1:-1].round().astype(int).tolist()

    def _sample(self, d, src: int, tgt: int, center: int) -> dict:
        s_name, t_name = self.sequences[src], self.sequences[tgt]
        out = {
            "image": extract_slab(d[s_name], center, self.num_slices),
            "label": extract_slab(d[t_name], center, self.num_slices),
            "src_code": torch.tensor(src, dtype=torch.long),
            "tgt_code": torch.tensor(tgt, dtype=torch.long),
            "src_name": s_name,
            "tgt_name": t_name,
            "slice": center if self.num_slices else -1,
            "case": d.get("case", ""),
        }
        for suffix in self.extra:  # e.g. the target's noiseless twin
            for role, name in (("image", s_name), ("label", t_name)):
                key = f"{name}_{suffix}"
                if key in d:
                    out[f"{role}_{suffix}"] = extract_slab(d[key], center, self.num_slices)
        return out


class RandSequencePaird(Randomizable, _PairBase):
    """Draw ``num_samples`` (source, target, slice) triples from one case.

    By default source and target are drawn independently and uniformly among the case's available
    sequences (they may coincide, as in the Seq2Seq paper); with ``identity_prob`` the target
    equals the source with that probability and is otherwise drawn among the *other* available
    sequences (a case with one sequence always gives the identity). The axial slice is drawn
    uniformly among the central ``central_slices`` (the paper keeps the central 128).

    Args:
        sequences: sequence names in code order (the index of a name is its target code).
        num_slices: adjacent slices stacked as channels (3 = 2.5D, 1 = 2D); 0 = whole volume (3D).
        num_samples: samples per call; a list is returned, which MONAI's DataLoader flattens.
        central_slices: restrict slices to the central N (``None`` = all).
        extra: key suffixes cut alongside (``"noiseless"`` adds ``image_noiseless``/``label_noiseless``).
        identity_prob: probability of a (source, source) pair; ``None`` (default): independent
            uniform draws, i.e. ``1 / n`` for a case with ``n`` sequences. Identity pairs teach
            nothing about translation and, with the step's self-reconstruction and cycle terms,
            pull a small model towards copying its input (``bundles/seq2seq/docs/README.md``).
        pairs: how the pairs of one call are chosen: ``"independent"`` (default) draws a pair
            per sample; ``"per_case"`` draws one pair for all ``num_samples`` samples of the call
            (VQ-Seq2Seq: each case contributes one pair); ``"all"`` takes every ordered pair of
            two different available sequences, ``num_samples`` slices each (``n (n - 1)
            num_samples`` samples; a single-sequence case gives its identity pair).

    Returns:
        a list of ``num_samples`` dicts (see the module docstring for keys).
    """

    PAIRS = ("independent", "per_case", "all")

    def __init__(self, sequences, num_slices: int = 3, num_samples: int = 1, central_slices=None, extra=(),
                 identity_prob: float | None = None, pairs: str = "independent"):
        _PairBase.__init__(self, sequences, num_slices, central_slices, extra)
        self.num_samples = int(num_samples)
        if pairs not in self.PAIRS:
            raise ValueError(f"pairs must be one of {self.PAIRS}, got {pairs!r}")
        self.pairs = pairs
        if identity_prob is not None and not 0.0 <= float(identity_prob) <= 1.0:
            raise ValueError(f"identity_prob must lie in [0, 1] (or be None), got {identity_prob}")
        self.identity_prob = None if identity_prob is None else float(identity_prob)

    def draw_pair(self, avail: list[int]) -> tuple[int, int]:
        """A (source, target) pair of code indices among ``avail``."""
        src = int(self.R.choice(avail))
        if self.identity_prob is None:
            return src, int(self.R.choice(avail))
        others = [i for i in avail if i != src]
        if not others or self.R.random_sample() < self.identity_prob:
            return src, src
        return src, int(self.R.choice(others))

    def randomize(self, data=None) -> None:  # draws happen per sample in __call__
        pass

    def __call__(self, data: Mapping[Hashable, object]) -> list[dict]:
        d = dict(data)
        avail, lo, hi = self._window(d)
        if self.pairs == "all":
            pairs = [(s, t) for s in avail for t in avail if s != t] or [(avail[0], avail[0])]
            pairs = [p for p in pairs for _ in range(self.num_samples)]
        elif self.pairs == "per_case":
            pairs = [self.draw_pair(avail)] * self.num_samples
        else:
            pairs = [self.draw_pair(avail) for _ in range(self.num_samples)]
        out = []
        for src, tgt in pairs:
            center = int(self.R.randint(lo, hi)) if self.num_slices else -1
            out.append(self._sample(d, src, tgt, center))
        return out


class SequencePairsd(_PairBase):
    """Every ordered (source, target) pair of the available sequences at fixed slices (validation).

    Args:
        sequences: sequence names in code order.
        num_slices: as :class:`RandSequencePaird`.
        slices_per_case: evenly spaced axial slices inside the central window (ignored in 3D).
        central_slices: the central window (``None`` = all slices).
        include_identity: also emit source == target pairs.
        extra: as :class:`RandSequencePaird`.
    """

    def __init__(
        self,
        sequences,
        num_slices: int = 3,
        slices_per_case: int = 1,
        central_slices=None,
        include_identity: bool = False,
        extra=(),
    ):
        super().__init__(sequences, num_slices, central_slices, extra)
        self.slices_per_case = int(slices_per_case)
        self.include_identity = include_identity

    def __call__(self, data: Mapping[Hashable, object]) -> list[dict]:
        d = dict(data)
        avail, lo, hi = self._window(d)
        centers = self._fixed_centers(lo, hi)
        return [
            self._sample(d, s, t, c)
            for c in centers
            for s in avail
            for t in avail
            if self.include_identity or s != t
        ]


class _SubsetBase(_PairBase):
    """Many-to-one samples: the chosen sources stacked as channels ``(N * num_slices, H, W)``
    (zeros for sequences not used), ``mask`` ``(N,)`` (1 = used), ``label`` the target."""

    def _subset_sample(self, d, subset: list[int], tgt: int, center: int, rec: int) -> dict:
        slabs = [extract_slab(d[name], center, self.num_slices) if i in subset else None
                 for i, name in enumerate(self.sequences)]
        zeros = torch.zeros_like(next(s for s in slabs if s is not None))
        t_name = self.sequences[tgt]
        out = {
            "image": torch.cat([s if s is not None else zeros for s in slabs]),
            "mask": torch.tensor([float(i in subset) for i in range(len(self.sequences))]),
            "label": extract_slab(d[t_name], center, self.num_slices),
            "tgt_code": torch.tensor(tgt, dtype=torch.long),
            "rec_code": torch.tensor(rec, dtype=torch.long),
            "src_name": "+".join(self.sequences[i] for i in subset),
            "tgt_name": t_name,
            "slice": center if self.num_slices else -1,
            "case": d.get("case", ""),
        }
        for suffix in self.extra:
            key = f"{t_name}_{suffix}"
            if key in d:
                out[f"label_{suffix}"] = extract_slab(d[key], center, self.num_slices)
        return out


class RandSourceSubsetd(Randomizable, _SubsetBase):
    """Draw ``num_samples`` (source subset, target, slice) triples for many-to-one training (TSF-Seq2Seq).

    The subset size is uniform in ``1 .. min(n - 1, max_sources)`` for a case with ``n``
    available sequences, its members uniform among them; the target is drawn among the available
    sequences outside the subset (a single-sequence case reconstructs itself); ``rec_code`` is a random member of the subset (the paper's
    source-reconstruction term).

    Returns:
        a list of dicts with ``image`` ``(N * num_slices, H, W)`` (or ``(N, H, W, D)`` in 3D),
        ``mask`` ``(N,)``, ``label``, ``tgt_code``, ``rec_code``, ``src_name`` (e.g. ``"t1+t2"``),
        ``tgt_name``, ``slice``, ``case``.
    """

    def __init__(self, sequences, num_slices: int = 3, num_samples: int = 1, central_slices=None,
                 max_sources: int | None = None, extra=()):
        _SubsetBase.__init__(self, sequences, num_slices, central_slices, extra)
        self.num_samples, self.max_sources = int(num_samples), max_sources

    def randomize(self, data=None) -> None:
        pass

    def __call__(self, data: Mapping[Hashable, object]) -> list[dict]:
        d = dict(data)
        avail, lo, hi = self._window(d)
        out = []
        for _ in range(self.num_samples):
            k_max = max(len(avail) - 1, 1)  # leave a target outside the subset when there is one
            if self.max_sources is not None:
                k_max = min(k_max, self.max_sources)
            k = int(self.R.randint(1, k_max + 1))
            subset = sorted(int(i) for i in self.R.choice(avail, size=k, replace=False))
            outside = [i for i in avail if i not in subset]
            tgt = int(self.R.choice(outside or avail))
            rec = int(self.R.choice(subset))
            center = int(self.R.randint(lo, hi)) if self.num_slices else -1
            out.append(self._subset_sample(d, subset, tgt, center, rec))
        return out


class SourceSubsetsd(_SubsetBase):
    """Deterministic many-to-one samples for validation and evaluation.

    For every available target: either the largest subset (all other available sequences,
    ``all_subsets=False``) or every non-empty subset of the other available sequences
    (``all_subsets=True``), at ``slices_per_case`` evenly spaced slices (whole volumes in 3D).
    """

    def __init__(self, sequences, num_slices: int = 3, slices_per_case: int = 1, central_slices=None,
                 all_subsets: bool = False, extra=()):
        super().__init__(sequences, num_slices, central_slices, extra)
        self.slices_per_case, self.all_subsets = int(slices_per_case), all_subsets

    def subsets(self, avail: list[int], tgt: int) -> list[list[int]]:
        others = [i for i in avail if i != tgt]
        if not self.all_subsets:
            return [others] if others else []
        return [[others[j] for j in range(len(others)) if m >> j & 1] for m in range(1, 2 ** len(others))]

    def __call__(self, data: Mapping[Hashable, object]) -> list[dict]:
        d = dict(data)
        avail, lo, hi = self._window(d)
        centers = self._fixed_centers(lo, hi)
        return [self._subset_sample(d, sub, t, c, sub[0]) for c in centers for t in avail for sub in self.subsets(avail, t)]
