"""tools/contrast_study.py: the source-limited oracle against known answers."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import contrast_study  # noqa: E402

from mrsynth.metrics import pearson_r, tissue_oracle  # noqa: E402


def test_source_limited_oracle_tells_lesion_compartments_apart_only_as_the_source_does():
    """Voxels mix CSF / GM / WM; 30 % hold a lesion share of one of two compartments, which the
    target shows differently (one bright, one dark). A source that shows them differently lets
    the oracle paint both; a source that shows them alike caps it below the tissue oracle."""
    rng = np.random.default_rng(0)
    n = 6000
    normal = rng.dirichlet([1, 1, 1], size=n).T
    share = np.where(rng.random(n) < 0.3, rng.uniform(0.5, 1.0, n), 0.0)
    kind = rng.random(n) < 0.5
    frac = np.concatenate([normal * (1 - share), (share * kind)[None], (share * ~kind)[None]])  # (5, n), sums to 1
    m = np.ones(n, bool)
    target = frac.T @ np.array([0.3, -0.2, -0.6, 0.9, -0.9])  # [-1, 1]
    visible = frac.T @ np.array([0.2, 0.5, 0.8, 1.2, 0.0])  # the two compartments look different in the source
    hidden = frac.T @ np.array([0.2, 0.5, 0.8, 1.0, 1.0])  # ... alike
    full = pearson_r(tissue_oracle(frac, target, m), target)
    seen = pearson_r(contrast_study.source_limited_oracle(frac, visible, target, m), target)
    unseen = pearson_r(contrast_study.source_limited_oracle(frac, hidden, target, m), target)
    assert full > 0.999  # knowing every fraction, this linear target is exact
    assert seen > 0.97  # the compartment read from the source's (binned) intensity
    assert unseen < seen - 0.1  # compartments the source does not tell apart cap it
    half = np.arange(n) % 2 == 0  # predictions only inside the mask, zero elsewhere
    out = contrast_study.source_limited_oracle(frac, visible, target, half)
    assert np.all(out[~half] == 0) and pearson_r(out[half], target[half]) > 0.97
