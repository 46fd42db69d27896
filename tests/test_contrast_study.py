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


def test_error_decomposition_separates_tissue_contrast_from_the_rest(tmp_path, capsys):
    """A synthesis that is a tissue painting plus non-tissue clutter: the projection recovers the
    painting's tissue means and r, the share left is the clutter's part of the variance; the
    command reads a phantom-layout folder and skips a case without its files."""
    import nibabel as nib

    rng = np.random.default_rng(2)
    shape = (12, 10, 8)
    # (3, X, Y, Z): csf, gm, wm; the rest of each voxel outside the brain, as at the phantom's edges
    frac = rng.dirichlet([1, 1, 1], size=shape).transpose(3, 0, 1, 2) * rng.uniform(0.5, 1.0, shape)
    mask = np.ones(shape, bool)
    truth = np.tensordot([3.0, 1.4, 1.0], frac, 1)  # T2-like: CSF bright
    painting = np.tensordot([2.0, 1.2, 1.0], frac, 1)  # the right side of WM, compressed
    clutter = rng.normal(0, painting.std(), shape)  # as much variance as the painting's
    e = contrast_study.error_decomposition(painting + clutter, truth, frac, mask, source_noise=clutter)
    assert abs(e["share"] - 0.5) < 0.05 and e["share_truth"] < 1e-12
    assert e["r_oracle"] > 0.9999 and abs(e["r_projection"] - pearson_r(painting, truth)) < 0.01
    assert e["r"] < e["r_projection"] - 0.2  # the clutter costs r; the projection sees through it
    assert abs(e["r_noise"]) > 0.95 and abs(e["r_residuals"]) < 0.2
    np.testing.assert_allclose(e["means"][:2] / e["means"][2], [2.0, 1.2], atol=0.1)
    np.testing.assert_allclose(e["means_truth"] / e["means_truth"][2], [3.0, 1.4, 1.0], atol=1e-6)

    # the command: one complete case, one without its fractions
    six = np.concatenate([frac, np.zeros((3,) + shape)]).transpose(1, 2, 3, 0)  # TISSUES order, (X, Y, Z, 6)
    for case in ("PHANTOM_0000", "PHANTOM_0001"):
        data, syn = tmp_path / "data" / case, tmp_path / "syn" / case
        data.mkdir(parents=True), syn.mkdir(parents=True)
        save = lambda a, p: nib.save(nib.Nifti1Image(np.asarray(a, np.float32), np.eye(4)), str(p))  # noqa: E731
        save(truth, data / f"{case}_t2_noiseless.nii.gz")
        save(painting + clutter, syn / f"{case}_t2_syn.nii.gz")
        save(1.0 - truth / 3, data / f"{case}_t1_noiseless.nii.gz")
        save(1.0 - truth / 3 + clutter, data / f"{case}_t1.nii.gz")
        save(np.ones(shape), data / f"{case}_tissue.nii.gz")
        if case == "PHANTOM_0000":
            save(six, data / f"{case}_fractions.nii.gz")
    contrast_study.main(["errors", "--data", str(tmp_path / "data"), "--synthesized", str(tmp_path / "syn"),
                         "--source", "t1", "--target", "t2"])
    out, err = capsys.readouterr()
    row = next(line for line in out.splitlines() if line.startswith("| PHANTOM_0000"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert abs(float(cells[4]) - e["share"]) < 1e-3  # the same decomposition as the function's
    assert "csf 3.00 gm 1.40" in cells[9]
    assert "PHANTOM_0001 | skipped: no PHANTOM_0001_fractions.nii.gz" in err


def test_loss_study_draws_lesion_slices_weighs_lesions_and_reports_contrast_ratios(tmp_path, capsys):
    """``loss --lesion-prob --lesion-weight`` trains on a phantom folder with seg labels and prints
    the contrast ratios beside r; the weight is refused with the self and cycle terms (it weighs the
    target term alone) and without seg labels."""
    import pytest

    from mrsynth.data.phantom import write_dataset

    write_dataset(tmp_path / "p", subjects=2, spacing=2.0, seed=0, progress=False)
    common = ["loss", "--data", str(tmp_path / "p"), "--steps", "1", "--eval-every", "1", "--patch", "64",
              "--crops", "2", "--identity-prob", "0.1", "--mixture", "4"]
    contrast_study.main(common + ["--self", "0", "--cycle", "0", "--lesion-prob", "1", "--lesion-weight", "3"])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("step 1 "))
    ok, n = line.split("within 15 % of the truth's: ")[1].split(",")[0].split("/")
    assert int(n) >= 48 and 0 <= int(ok) <= int(n)  # 12 pairs x 4-5 ratios on the 2 unseen subjects
    assert "oedema/wm" in line and "mean |error|" in line
    with pytest.raises(SystemExit, match="target term alone"):
        contrast_study.main(common + ["--lesion-weight", "3"])  # the paper's self and cycle terms on
    contrast_study.main(["ratios", "--data", str(tmp_path / "p")])  # leave one out over the 2 subjects
    rows = [x for x in capsys.readouterr().out.splitlines() if x.split("|")[1:2] and x.split("|")[1].strip() in contrast_study.SEQ]
    assert [r.split("|")[1].strip() for r in rows] == ["t1", "t1ce", "t2", "flair"]
    t2_csf = rows[2].split("|")[2].strip()  # "lo-hi, share": T2 shows CSF brighter than WM in both
    assert float(t2_csf.split("-")[0]) > 1.0 and 0.0 <= float(t2_csf.split(", ")[1]) <= 1.0
    for seg in (tmp_path / "p").glob("*/*_seg.nii.gz"):
        seg.unlink()
    with pytest.raises(SystemExit, match="need a seg label"):
        contrast_study.main(common + ["--self", "0", "--cycle", "0", "--lesion-prob", "0.5"])
