"""Domain augmentation for VQ-Seq2Seq (papers.md section 3): the network sees a disturbed copy of
its input and is trained against the clean image, which is what teaches it to remove noise,
intensity drift and bias fields.

:class:`RandDomainAugmentd` leaves ``image`` and ``label`` as they are and writes the disturbed
copies next to them (``image_aug``, ``label_aug``): every loss is computed against the clean keys.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.utils import convert_to_tensor
from monai.transforms import (Compose, MapTransform, RandAdjustContrast, RandBiasField, RandGaussianNoise,
                              RandScaleIntensity, RandShiftIntensity, Randomizable)

__all__ = ["RandDomainAugmentd"]


class RandDomainAugmentd(Randomizable, MapTransform):
    """Brightness, contrast, gamma, a smooth bias field and Gaussian noise, each applied with
    probability ``prob``, to a copy of every key (written to ``<key><suffix>``).

    The images are on the bundles' [-1, 1] scale with background at -1; the disturbances act on
    ``x + 1`` (background 0, like a magnitude image) and the result is shifted back, so that the
    bias field and the contrast change multiply the signal and leave the background at 0.
    Each key gets its own draws. MONAI's random array transforms do the work:

    - brightness: :class:`~monai.transforms.RandShiftIntensity`, offset uniform in ``+-brightness``;
    - contrast: :class:`~monai.transforms.RandScaleIntensity`, factor uniform in ``1 +- contrast``;
    - gamma: :class:`~monai.transforms.RandAdjustContrast`, gamma uniform in ``gamma``;
    - bias field: :class:`~monai.transforms.RandBiasField`, degree 3, coefficients in ``bias``;
    - noise: :class:`~monai.transforms.RandGaussianNoise`, std uniform in ``[0, noise]``.

    Args:
        keys: keys to disturb (the channel-first images, ``(C, H, W)`` or ``(C, H, W, D)``).
        prob: probability of each disturbance (paper: 0.5).
        brightness, contrast, gamma, bias, noise: strengths as above (0 / ``None`` disables one).
        suffix: the disturbed copy of ``key`` goes to ``key + suffix``.
        allow_missing_keys: skip absent keys.
    """

    def __init__(self, keys: KeysCollection, prob: float = 0.5, brightness: float = 0.1, contrast: float = 0.25,
                 gamma: Sequence[float] | None = (0.7, 1.5), bias: Sequence[float] | None = (0.0, 0.3),
                 noise: float = 0.05, suffix: str = "_aug", allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f"prob must lie in [0, 1], got {prob}")
        self.suffix = str(suffix)
        parts = []
        if brightness:
            parts.append(RandShiftIntensity(offsets=float(brightness), prob=prob))
        if contrast:
            parts.append(RandScaleIntensity(factors=float(contrast), prob=prob))
        if gamma:
            parts.append(RandAdjustContrast(gamma=tuple(gamma), prob=prob))
        if bias:
            parts.append(RandBiasField(degree=3, coeff_range=tuple(bias), prob=prob))
        if noise:
            parts.append(RandGaussianNoise(mean=0.0, std=float(noise), prob=prob, sample_std=True))
        self.transform = Compose(parts)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.transform.set_random_state(seed, state)
        return self

    def randomize(self, data=None) -> None:  # each part draws its own randomness per call
        pass

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            x = torch.as_tensor(d[key]).float()
            out = self.transform(x + 1.0)
            d[f"{key}{self.suffix}"] = convert_to_tensor(out, dtype=x.dtype, track_meta=False) - 1.0
        return d
