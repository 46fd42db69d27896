"""Evaluation of a prompt-conditioned synthesis network (TUMSyn): every target image is asked for
by the prompt of its own sidecar (its modality and TR / TE / TI / flip angle, the subject's age,
sex and scanner, its voxel size), from every source, and scored like the other bundles
(:class:`~mrsynth.workflows.PairwiseEvaluation`: noiseless scores, tissue contrast ratios against
the truth, the denoise-and-remap baseline, the noise-floor limit). On the phantom the targets
include protocols never seen in training (held-out presets), so the table shows whether the
prompt, not a memorised sequence name, sets the contrast.
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from .conditioning import TargetPrompt
from .evaluation import PairwiseEvaluation

__all__ = ["PromptedEvaluation"]


class PromptedEvaluation(PairwiseEvaluation):
    """:class:`~mrsynth.workflows.PairwiseEvaluation` with each target asked for by its sidecar's prompt.

    Args:
        tokenizer: a :class:`~mrsynth.transforms.PromptTokenizer`.
        value_range: the network's intensity scale (TUMSyn: ``(0, 1)``); images are scored on
            ``[-1, 1]`` like every bundle's.
        sidecar_suffix: the case key of an image's sidecar (``<name>_meta``).
        The rest as :class:`~mrsynth.workflows.PairwiseEvaluation` (``sources`` / ``targets``
        restrict the pairs).
    """

    def __init__(self, *args, tokenizer=None, value_range=(0.0, 1.0), sidecar_suffix: str = "_meta", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        from ..transforms.prompt import PromptTokenizer

        self.tokenizer = tokenizer or PromptTokenizer()
        self.value_range = (float(value_range[0]), float(value_range[1]))
        self.sidecar_suffix = sidecar_suffix

    def conditioning(self, target: str, d: dict | None = None):
        from ..transforms.prompt import Prompt

        side = None if d is None else d.get(f"{target}{self.sidecar_suffix}")
        if side is None:
            raise DataError(f"no sidecar for target {target!r}: a prompt-conditioned model needs the target's prompt",
                            None if d is None else d.get("case"))
        from ..engines.base import unwrap

        return TargetPrompt(prompt=Prompt.from_sidecar(side), tokenizer=self.tokenizer, name=target, inherit=(),
                            source_protocol=bool(getattr(unwrap(self.network), "source_protocol", False)))

    def to_score(self, x: np.ndarray) -> np.ndarray:
        lo, hi = self.value_range
        return (np.asarray(x, dtype=np.float32) - lo) / (hi - lo) * 2.0 - 1.0
