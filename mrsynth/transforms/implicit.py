"""Training samples for implicit (coordinate-query) synthesis: TUMSyn's random-scale cubes.

:class:`RandImplicitPaird` draws a (source, target) pair of a case's images, a random
high-resolution cube of ``round(patch_size * s)`` voxels with ``s`` uniform in ``scale_range``
(the paper: ``20 s``, ``s`` in [1, 3]), resamples both cubes to ``patch_size^3`` (the
low-resolution inputs, each voxel the mean of the high-resolution voxels it covers) and draws
``num_points`` query points among the high-resolution voxels, with both images' values there.
The prompts of the pair are rewritten with the voxel size each side has in the sample: the
source at ``s`` times its native voxel size (the network sees the low-resolution cube), the
target at its native one (the queries are its voxels).
"""

from __future__ import annotations

import zlib
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.data.utils import affine_to_spacing
from monai.transforms import MapTransform, Randomizable

from ..errors import DataError

__all__ = ["RandImplicitPaird", "scaled_prompt"]


def scaled_prompt(text, factor, native=None) -> str:
    """The prompt ``text`` (text, :class:`~mrsynth.transforms.Prompt` or sidecar) with its voxel
    size multiplied by ``factor`` (a number or one per axis). ``native`` stands in for a missing
    voxel size (the image's own spacing); without either it stays unknown."""
    from .prompt import Prompt

    p = Prompt.from_any(text)
    vs = p.voxel_size if p.voxel_size is not None else native
    if vs is None:
        return p.format()
    factors = [float(factor)] * 3 if np.isscalar(factor) else [float(f) for f in factor]
    return p.replace(voxel_size=tuple(float(v) * f for v, f in zip(vs, factors))).format()


def _spacing(img) -> list[float] | None:
    affine = getattr(img, "affine", None)
    if affine is None:
        return None
    return affine_to_spacing(np.asarray(affine, dtype=np.float64), r=3).round(4).tolist()


class RandImplicitPaird(Randomizable, MapTransform):
    """Draw ``num_samples`` implicit-synthesis samples from one case.

    Args:
        sequences: the image keys a case may hold (absent ones are skipped; at least one needed).
        patch_size: edge of the low-resolution input cube, voxels (paper 20).
        scale_range: ``(min, max)`` of the scale ``s`` (paper ``(1, 3)``); the high-resolution
            cube has ``round(patch_size * s)`` voxels per edge (fewer where the image is smaller).
        num_points: query points per sample (paper 8000); 0 gives no queries (stage 1 uses the
            low-resolution cube and its prompt only).
        num_samples: samples per call (a list is returned, which MONAI's DataLoader flattens).
        identity: allow source == target (otherwise the target is another image where the case
            has two or more).
        foreground: the cube is centred on a voxel whose source value exceeds this (the head,
            on a [0, 1] scale), where there is one.
        prompt_suffix: the case holds each image's prompt text at ``<name><prompt_suffix>``
            (:class:`~mrsynth.transforms.PromptFromSidecard`); ``None``: no prompts.
        fixed_seed: for validation: every call reseeds from this and the case id, so a case
            always gives the same samples.
        targets_per_source: the samples come in groups of this many that share the source image,
            the cube, the scale and the query points and differ only in the target (distinct
            targets where the case has enough images): within a group the target's prompt is
            the only thing that tells the samples apart, so a network that ignores it cannot fit
            them. ``num_samples`` must be a multiple of it. 1 (default): every sample draws its
            own pair and cube.
        thick_slice_prob: probability that a sample's scale applies along one axis only (drawn at
            random), the others kept at the image's voxel size: thick slices, the clinical
            super-resolution case (the phantom's ``slice_thickness``), rather than the paper's
            isotropic cube. 0 (default): every sample isotropic, as the paper.

    Each sample: ``image`` (the source cube, ``(1, P, P, P)``), ``label_lr`` (the target cube),
    ``coords`` ``(num_points, 3)`` (normalised, see :mod:`mrsynth.networks.tumsyn`), ``label``
    and ``image_values`` (``(num_points,)``: target and source at the queries), ``scale``,
    ``scale_factors`` (``(3,)``: the scale along each axis, ``scale`` or 1),
    ``image_prompt`` / ``label_prompt`` (the source at the cube's voxel size, the target at the
    queries'), ``image_prompt_query`` (the source at the queries' voxel size: what the target ->
    source direction is asked for; with queries only), ``src_name``, ``tgt_name``, ``case``.
    """

    def __init__(self, sequences: Sequence[str], patch_size: int = 20, scale_range=(1.0, 3.0), num_points: int = 8000,
                 num_samples: int = 1, identity: bool = False, foreground: float = 0.05,
                 prompt_suffix: str | None = "_prompt", fixed_seed: int | None = None,
                 targets_per_source: int = 1, thick_slice_prob: float = 0.0) -> None:
        MapTransform.__init__(self, list(sequences), allow_missing_keys=True)
        self.sequences = [str(s) for s in sequences]
        self.patch_size, self.num_points, self.num_samples = int(patch_size), int(num_points), int(num_samples)
        # in shared memory, so that a change (``ScaleCurriculum``) reaches forked DataLoader workers
        self._scale = torch.zeros(2, dtype=torch.float64).share_memory_()
        self.scale_range = scale_range
        self.identity, self.foreground = bool(identity), float(foreground)
        self.prompt_suffix, self.fixed_seed = prompt_suffix, fixed_seed
        self.targets_per_source = int(targets_per_source)
        self.thick_slice_prob = float(thick_slice_prob)
        if not 0.0 <= self.thick_slice_prob <= 1.0:
            raise ValueError(f"thick_slice_prob must be in [0, 1], got {thick_slice_prob!r}")
        if self.targets_per_source < 1 or self.num_samples % self.targets_per_source:
            raise ValueError(f"targets_per_source ({targets_per_source}) must be >= 1 and divide num_samples "
                             f"({num_samples})")

    @property
    def scale_range(self) -> tuple[float, float]:
        """``(min, max)`` of the scale ``s``. Settable while training runs: the bounds live in shared
        memory, so DataLoader worker processes (forked, persistent or not) draw from the new range
        from their next sample on (:class:`mrsynth.handlers.ScaleCurriculum`)."""
        lo, hi = self._scale.tolist()
        return lo, hi

    @scale_range.setter
    def scale_range(self, value) -> None:
        try:
            lo, hi = (float(v) for v in value)
        except (TypeError, ValueError):
            raise ValueError(f"scale_range must be (min, max), got {value!r}") from None
        if not 1.0 <= lo <= hi:
            raise ValueError(f"scale_range must satisfy 1 <= min <= max, got {value!r}")
        self._scale[0], self._scale[1] = lo, hi

    def randomize(self, data=None) -> None:  # draws happen per sample in __call__
        pass

    def __call__(self, data: Mapping[Hashable, object]) -> list[dict]:
        d = dict(data)
        case = str(d.get("case", ""))
        if self.fixed_seed is not None:
            self.set_random_state(seed=(int(self.fixed_seed) + zlib.crc32(case.encode())) % (2**32))
        avail = [s for s in self.sequences if s in d]
        if not avail:
            raise DataError(f"none of the images {self.sequences} is present", case or None)
        out: list[dict] = []
        for _ in range(self.num_samples // self.targets_per_source):
            src = avail[int(self.R.randint(len(avail)))]
            others = avail if self.identity or len(avail) == 1 else [s for s in avail if s != src]
            if self.targets_per_source == 1:
                targets = [others[int(self.R.randint(len(others)))]]
            else:  # distinct targets first, repeats only where the case has too few images
                order = [others[int(i)] for i in self.R.permutation(len(others))]
                targets = [order[i % len(order)] for i in range(self.targets_per_source)]
            out += self._group(d, src, targets, case)
        return out

    def _group(self, d: dict, src: str, targets: list[str], case: str) -> list[dict]:
        a = torch.as_tensor(d[src]).float()
        for tgt in targets:
            if tuple(torch.as_tensor(d[tgt]).shape) != tuple(a.shape):
                raise DataError(f"{src!r} has shape {tuple(a.shape)}, {tgt!r} {tuple(torch.as_tensor(d[tgt]).shape)}: "
                                "one grid per case is needed", case or None)
        spatial = a.shape[1:]
        s = float(self.R.uniform(*self.scale_range))
        factors = [s, s, s]
        if self.thick_slice_prob > 0 and self.R.uniform() < self.thick_slice_prob:  # no draw at 0: streams as before
            factors = [1.0, 1.0, 1.0]
            factors[int(self.R.randint(3))] = s
        m = [min(int(round(self.patch_size * f)), n) for f, n in zip(factors, spatial)]
        fg = torch.nonzero(a[0] > self.foreground)
        centre = fg[int(self.R.randint(len(fg)))].tolist() if len(fg) else [n // 2 for n in spatial]
        start = [min(max(c - k // 2, 0), n - k) for c, k, n in zip(centre, m, spatial)]
        sl = (slice(None),) + tuple(slice(st, st + k) for st, k in zip(start, m))
        size = (self.patch_size,) * 3
        hr_a = a[sl]
        lr_a = F.interpolate(hr_a[None], size=size, mode="area")[0]  # (1, P, P, P)
        if self.num_points:
            total = int(np.prod(m))
            idx = self.R.choice(total, size=self.num_points, replace=total < self.num_points)
            ijk = np.stack(np.unravel_index(idx, m), axis=-1)
            k = torch.as_tensor(m, dtype=torch.float32)
            coords = (torch.as_tensor(ijk, dtype=torch.float32) * 2 + 1) / k - 1
            t = torch.as_tensor(idx, dtype=torch.long)
        samples = []
        for tgt in targets:
            hr_b = torch.as_tensor(d[tgt]).float()[sl]
            lr_b = F.interpolate(hr_b[None], size=size, mode="area")[0]
            out = {"image": lr_a.clone(), "label_lr": lr_b, "scale": torch.tensor(s),
                   "scale_factors": torch.tensor(factors), "src_name": src, "tgt_name": tgt, "case": case}
            if self.num_points:
                out["coords"] = coords.clone()
                out["label"], out["image_values"] = hr_b.reshape(-1)[t], hr_a.reshape(-1)[t]
            else:
                out["label"] = lr_b
            samples.append(self._prompts(out, d, src, tgt, m, case))
        return samples

    def _prompts(self, out: dict, d: dict, src: str, tgt: str, m: list[int], case: str) -> dict:
        if self.prompt_suffix is not None:
            factors = [mi / self.patch_size for mi in m]  # per-axis: the source voxel grows by m / P
            prompts = [("image_prompt", src, factors), ("label_prompt", tgt, 1.0)]
            if self.num_points:  # what the target -> source direction asks for: the source at the queries' voxel size
                prompts.append(("image_prompt_query", src, 1.0))
            for out_key, name, f in prompts:
                key = f"{name}{self.prompt_suffix}"
                if key not in d:
                    raise DataError(f"no prompt for image {name!r} (key {key!r}): add PromptFromSidecard", case or None)
                out[out_key] = scaled_prompt(d[key], f, _spacing(d[name]))
        return out

