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


def test_population_predictors_reach_a_shared_contrast_and_miss_a_subject_specific_one():
    """Subjects share the anatomy statistics; the target's tissue means are either the same for
    every subject (the population fit is then as good as the subject's own) or drawn per subject
    (the population fit misses what only the scan's protocol says). The lookup table learns a
    monotone decreasing map from the source's rank."""
    rng = np.random.default_rng(1)
    n = 4000

    def subject(target_means):
        frac = rng.dirichlet([1, 1, 1], size=n).T
        source = frac.T @ np.array([-0.8, 0.1, 0.6])  # T1-like: CSF dark
        target = frac.T @ np.asarray(target_means)
        clean = np.stack([source, source, target, target])  # SEQ order: t1, t1ce, t2, flair
        return clean, np.ones(n, bool), frac

    shared = [0.8, -0.1, -0.6]
    pop = contrast_study.PopulationPredictors([subject(shared) for _ in range(4)], bins=16)
    clean, m, frac = subject(shared)
    assert pearson_r(pop.tissue(frac, "t2", m), clean[2]) > 0.999
    lut = pop.lut(clean[0], "t1", "t2", m)
    assert pearson_r(lut, clean[2]) > 0.9  # the map from rank to intensity, learnt across subjects
    assert np.all(np.diff(pop.tables[("t1", "t2")]) < 0)  # CSF dark in the source, bright in the target

    drawn = [subject(rng.normal(0, 1, 3)) for _ in range(8)]
    pop = contrast_study.PopulationPredictors(drawn, bins=16)
    clean, m, frac = subject([1.0, 0.9, -1.0])  # GM as bright as CSF: not the population's mean
    own = pearson_r(tissue_oracle(frac, clean[2], m), clean[2])
    assert own > 0.999 and pearson_r(pop.tissue(frac, "t2", m), clean[2]) < own - 0.05
