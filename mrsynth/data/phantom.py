"""Phantom simulator: multi-sequence brain MRI with a known answer.

Real anatomy (nilearn's MNI152 2009 grey/white-matter probability maps and brain mask) is
warped per subject, given 0-3 tumours (necrotic core, enhancing rim, oedema, mass effect) and
imaged with MR signal equations:

================  ==========================================  =================================
sequence          model                                       signal (per tissue compartment)
================  ==========================================  =================================
``t1``            2D spin echo, short TR / short TE           PD (1 - e^(-TR/T1)) e^(-TE/T2)
``t1ce``          3D spoiled gradient echo after gadolinium   PD sin(a)(1-E1)/(1-cos(a)E1) e^(-TE/T2),
                                                              T1 shortened: 1/T1 = 1/T1_0 + r1 C
``t2``            (fast) spin echo                            PD (1 - e^(-TR/T1)) e^(-TE/T2)
``flair``         inversion recovery, CSF nulled              PD |1 - 2e^(-TI/T1) + e^(-TR/T1)| e^(-TE/T2)
``pd``            spin echo, long TR, short TE                as ``t2``
================  ==========================================  =================================

with E1 = e^(-TR/T1). Each voxel is a partial-volume mix of six compartments (CSF, GM, WM,
necrosis, enhancing tumour, oedema); its signal is the fraction-weighted sum of the
compartments' signals. Then a smooth multiplicative bias field, a scanner scaling factor and
Rician noise (sigma = mean noiseless white-matter signal / ``snr``) are applied. The image
before noise is kept (:attr:`PhantomSubject.noiseless`): PSNR(noiseless, noisy) is the
*noise-floor limit*, and the expected Rician magnitude of the noiseless image (a higher bar, see
:func:`mrsynth.metrics.rician_mean`) the best prediction of the noisy target. The tissue map
(:attr:`PhantomSubject.tissue`) and the compartment fractions are the known answer for contrast.

Beyond the named sequences, the same subject can be imaged under arbitrary protocols (the
training data of a text-guided model such as TUMSyn must span imaging protocols): a protocol
is ``{"kind", "TR", "TE", "TI", "FA", "contrast_agent"}`` (:func:`check_protocol`) with a kind
from :data:`PROTOCOL_KINDS`: ``"se"`` spin echo, ``"spgr"`` spoiled gradient echo, ``"ir"``
inversion-recovery spin echo, i.e. the three signal models above (:func:`protocol_signal`).
:func:`simulate_subject` images any ``protocols={name: protocol}`` next to the named sequences,
with a sidecar describing it (``modality`` is what a radiologist would call it,
:func:`modality_of`). :func:`random_protocol` draws protocols over clinical ranges (optionally
holding modalities out), :data:`PROTOCOL_PRESETS` holds named protocols for evaluations, and
:func:`nominal_signals` predicts the tissue signals (hence tissue ratios) under a protocol;
:func:`write_dataset` writes random and preset protocols per case (``protocols=``,
``presets=``).

Everything is deterministic given the arguments. Random numbers come from
``numpy.random.default_rng`` streams keyed on the seed, one stream per purpose (anatomy,
protocol, per-sequence acquisition, per-sequence noise; extra protocols have their own
acquisition and noise streams keyed on a CRC-32 of their name), so that asking for another
subset of sequences, extra protocols, a thick-slice version or another SNR leaves the rest of
the subject unchanged, and all random fields live on fixed control grids in millimetres, so the
same seed gives the same subject at any voxel spacing.

Public API: :data:`TISSUE_PARAMETERS`, :func:`load_anatomy`, :func:`simulate_subject`,
:class:`PhantomSubject`, :func:`write_dataset`; protocols: :data:`PROTOCOL_KINDS`,
:data:`PROTOCOL_PRESETS`, :func:`check_protocol`, :func:`modality_of`, :func:`protocol_signal`,
:func:`nominal_signals`, :func:`random_protocol`, :func:`preset_image_name`,
:func:`subject_field_strength`.
"""

from __future__ import annotations

import functools
import math
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..io import save_json, save_nifti
from ..sequences import SEQUENCES, sequence_index

__all__ = [
    "TISSUE_PARAMETERS",
    "GD_RELAXIVITY",
    "LABELS",
    "TISSUE_CODES",
    "PhantomSubject",
    "load_anatomy",
    "simulate_subject",
    "write_dataset",
    "PROTOCOL_KINDS",
    "PROTOCOL_MODALITIES",
    "PROTOCOL_PRESETS",
    "check_protocol",
    "modality_of",
    "protocol_signal",
    "nominal_signals",
    "random_protocol",
    "preset_image_name",
    "subject_field_strength",
    "DCE_IMAGES",
    "save_dce",
]

# ---------------------------------------------------------------------------------------------
# Tissue parameters
# ---------------------------------------------------------------------------------------------
# TISSUE_PARAMETERS[tissue][field_strength_T] = {"T1": ms, "T2": ms, "PD": relative water}.
# Approximate, rounded values chosen inside the ranges reported by:
#   - Wansapura JP et al., "NMR relaxation times in the human brain at 3.0 Tesla",
#     J Magn Reson Imaging 1999 (3 T: WM T1 ~830 ms, GM T1 ~1330 ms, T2 WM ~80, GM ~110 ms);
#   - Stanisz GJ et al., "T1, T2 relaxation and magnetization transfer in tissue at 3T",
#     Magn Reson Med 2005 (1.5 T: WM 884/72 ms, GM 1124/95 ms; 3 T: WM 1084/69, GM 1820/99 ms);
#   - Bojorquez JZ et al., "What are normal relaxation times of tissues at 3 T?",
#     Magn Reson Imaging 2017 (review; spread of brain values at 3 T);
#   - Rooney WD et al., "Magnetic field and tissue dependencies of human brain longitudinal
#     1H2O relaxation in vivo", Magn Reson Med 2007 (CSF T1 ~4.3-4.4 s at any field);
#   - Neeb H et al., "A new method for fast quantitative mapping of absolute water content
#     in vivo", NeuroImage 2006 (water content: WM ~0.69, GM ~0.80, CSF 1.0 -> PD);
#   - tumour compartments: representative values for glioblastoma (T1 and T2 prolonged in
#     tumour and vasogenic oedema, longest in necrosis), in the spirit of Badve C et al.,
#     "MR fingerprinting of adult brain tumors: initial experience", AJNR 2017. These are
#     illustrative, not measured means.
# A subject draws a ~5 % jitter of every value (see ``simulate_subject``).
TISSUE_PARAMETERS: dict[str, dict[float, dict[str, float]]] = {
    "csf": {1.5: {"T1": 4200.0, "T2": 2000.0, "PD": 1.00}, 3.0: {"T1": 4300.0, "T2": 1800.0, "PD": 1.00}},
    "gm": {1.5: {"T1": 1150.0, "T2": 95.0, "PD": 0.80}, 3.0: {"T1": 1500.0, "T2": 90.0, "PD": 0.80}},
    "wm": {1.5: {"T1": 750.0, "T2": 75.0, "PD": 0.70}, 3.0: {"T1": 1000.0, "T2": 70.0, "PD": 0.70}},
    "necrosis": {1.5: {"T1": 1900.0, "T2": 250.0, "PD": 0.90}, 3.0: {"T1": 2200.0, "T2": 230.0, "PD": 0.90}},
    "enhancing": {1.5: {"T1": 1200.0, "T2": 110.0, "PD": 0.85}, 3.0: {"T1": 1600.0, "T2": 100.0, "PD": 0.85}},
    "oedema": {1.5: {"T1": 1100.0, "T2": 140.0, "PD": 0.85}, 3.0: {"T1": 1450.0, "T2": 130.0, "PD": 0.85}},
}
TISSUES: tuple[str, ...] = tuple(TISSUE_PARAMETERS)
FIELD_STRENGTHS: tuple[float, ...] = (1.5, 3.0)

# Longitudinal relaxivity r1 of gadopentetate (Gd-DTPA) in plasma, /mM/s, at 1.5 T and 3 T
# (Rohrer M et al., "Comparison of magnetic properties of MRI contrast media solutions at
# different magnetic field strengths", Invest Radiol 2005: 4.1 and 3.7).
GD_RELAXIVITY: dict[float, float] = {1.5: 4.1, 3.0: 3.7}

# Label values of the segmentation (BraTS convention).
LABELS: dict[str, int] = {"background": 0, "necrotic": 1, "oedema": 2, "enhancing": 4}
# Codes of the tissue map (the dominant compartment of each brain voxel), in TISSUES order + 1;
# mrsynth.metrics.TISSUE_CLASSES names them for the evaluation.
TISSUE_CODES: dict[str, int] = {"csf": 1, "gm": 2, "wm": 3, "necrosis": 4, "enhancing": 5, "oedema": 6}

MODALITY = {"t1": "T1w", "t1ce": "T1Gd", "t2": "T2w", "flair": "FLAIR", "pd": "PDw"}
ACQUISITION = {
    "t1": "2D spin echo",
    "t1ce": "3D spoiled gradient echo, post-contrast",
    "t2": "spin echo",
    "flair": "inversion recovery spin echo",
    "pd": "spin echo",
}
VENDORS = ("Siemens", "GE", "Philips")

_T1_TEXTURE_CTRL_MM = 6.0  # control spacing of the tissue texture field
_TUMOUR_SHAPE_CTRL_MM = 8.0  # control spacing of the tumour-boundary irregularity
_DEFORM_CTRL_MM = 30.0  # control spacing of the smooth deformation
_BIAS_CTRL_MM = 60.0  # control spacing of the bias field


@dataclass
class PhantomSubject:
    """One simulated subject. All arrays share the grid given by ``affine`` (RAS, mm), axial
    slices along the last axis.

    Attributes:
        images: sequence -> noisy magnitude image, float32 ``(X, Y, Z)``.
        noiseless: sequence -> the same image before noise (bias field and scanner scaling
            included); PSNR(noiseless, noisy) is the noise-floor limit.
        label: uint8 ``(X, Y, Z)``: 0 background, 1 necrotic core, 2 oedema, 4 enhancing rim.
        affine: 4 x 4 voxel-to-world matrix.
        sidecars: sequence -> acquisition metadata (the fields of a TUMSyn prompt: age, sex,
            scanner, modality, voxel size, TR, TE, TI, FA; plus field strength, vendor, snr).
        brain_mask: bool ``(X, Y, Z)``, voxels at least half brain tissue.
        tissue: uint8 ``(X, Y, Z)``: the dominant compartment of every brain voxel, codes of
            :data:`TISSUE_CODES` (1 CSF, 2 GM, 3 WM, 4 necrotic core, 5 enhancing rim, 6 oedema),
            0 outside ``brain_mask``: the classes the evaluation measures contrast on.
        fractions: compartment -> partial-volume fraction, float32 ``(X, Y, Z)``, for the
            compartments in :data:`TISSUES` (the ground truth behind ``label``).
        noise_sigma: sequence -> standard deviation of the Gaussian noise in each channel.
        info: subject-level draws (seed, field strength, tumours, tissue parameters used,
            contrast concentration), for inspection and reports.
    """

    images: dict[str, np.ndarray]
    noiseless: dict[str, np.ndarray]
    label: np.ndarray
    affine: np.ndarray
    sidecars: dict[str, dict]
    brain_mask: np.ndarray
    tissue: np.ndarray | None = None
    fractions: dict[str, np.ndarray] = field(default_factory=dict)
    noise_sigma: dict[str, float] = field(default_factory=dict)
    info: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Anatomy
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _template_1mm():
    """MNI152 2009 GM/WM probabilities and brain mask at 1 mm: ``(gm, wm, mask, affine)``."""
    from nilearn import datasets  # imported lazily: slow, and only the phantom needs it

    gm_img = datasets.load_mni152_gm_template(resolution=1)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).dataobj, dtype=np.float32)
    gm = np.asarray(gm_img.dataobj, dtype=np.float32)
    mask = np.asarray(datasets.load_mni152_brain_mask(resolution=1).dataobj, dtype=np.float32)
    gm = np.clip(gm, 0, 1) * mask
    wm = np.clip(wm, 0, 1) * mask
    total = gm + wm
    over = total > 1
    gm[over] /= total[over]
    wm[over] /= total[over]
    return gm, wm, mask, np.asarray(gm_img.affine, dtype=np.float64)


def _readonly(*arrays):
    for a in arrays:
        a.setflags(write=False)
    return arrays


@functools.lru_cache(maxsize=4)
def load_anatomy(spacing: float):
    """Tissue probability maps of the MNI152 2009 template at ``spacing`` mm isotropic.

    The 1 mm maps are smoothed with a Gaussian that turns a 1 mm box into a ``spacing`` mm box
    (anti-aliasing) and resampled once; the result is cached (the arrays are read-only).
    Voxel ``(0, 0, 0)`` keeps the template's world position, so the field of view is the
    template's.

    Returns:
        ``(gm, wm, csf, affine)``: three float32 arrays in [0, 1] and the 4 x 4 affine.
        CSF = clip(brain mask - GM - WM, 0, 1).
    """
    spacing = float(spacing)
    if not spacing > 0:
        raise ValueError(f"spacing must be positive, got {spacing}")
    gm, wm, mask, affine = _template_1mm()
    out_affine = affine @ np.diag([spacing, spacing, spacing, 1.0])
    if spacing == 1.0:
        gm_s, wm_s, mask_s = gm.copy(), wm.copy(), mask
    else:
        sigma = math.sqrt(max(spacing**2 - 1.0, 0.0) / 12.0)
        shape = tuple(int(math.floor((n - 1) / spacing)) + 1 for n in gm.shape)
        step = round(spacing)
        integer = abs(spacing - step) < 1e-9

        def resample(a):
            if sigma > 0:
                a = ndimage.gaussian_filter(a, sigma, mode="constant", truncate=3.0)
            if integer:
                return np.ascontiguousarray(a[::step, ::step, ::step][: shape[0], : shape[1], : shape[2]])
            grid = np.meshgrid(*[np.arange(n) * spacing for n in shape], indexing="ij", sparse=False)
            return ndimage.map_coordinates(a, grid, order=1, mode="constant", cval=0.0, prefilter=False)

        gm_s, wm_s, mask_s = resample(gm), resample(wm), resample(mask)
    csf = np.clip(mask_s - gm_s - wm_s, 0, 1).astype(np.float32)
    return _readonly(gm_s.astype(np.float32), wm_s.astype(np.float32), csf, out_affine)


@functools.lru_cache(maxsize=1)
def _tumour_sites():
    """Candidate tumour centres: world coordinates (mm) of deep white matter on a 4 mm lattice
    of the 1 mm template, with their distance (mm) to the outside of the brain."""
    gm, wm, mask, affine = _template_1mm()
    sub = (slice(None, None, 4),) * 3
    inside = mask[sub] > 0.5
    dist = ndimage.distance_transform_edt(inside) * 4.0
    keep = (wm[sub] > 0.5) & (dist > 10.0)
    idx = np.argwhere(keep)
    world = idx * 4.0 + affine[:3, 3]
    return world, dist[keep]


def _template_extent():
    """World bounds (mm) of the template field of view: ``(lo[3], hi[3])``."""
    gm, _, _, affine = _template_1mm()
    lo = affine[:3, 3]
    return lo, lo + (np.array(gm.shape) - 1) * np.diag(affine)[:3]


# ---------------------------------------------------------------------------------------------
# Smooth random fields (separable Gaussian radial basis on a fixed control grid in mm)
# ---------------------------------------------------------------------------------------------
def _control_axes(step: float):
    lo, hi = _template_extent()
    return [np.arange(lo[i] - 2 * step, hi[i] + 2 * step + 1e-6, step) for i in range(3)]


def _smooth_field(rng, axes, step: float) -> np.ndarray:
    """A zero-mean, unit-variance smooth random field on the grid ``axes`` (world mm per axis).

    Coefficients are drawn on a control lattice with spacing ``step`` mm covering the template
    (so the draw does not depend on the output grid) and interpolated with separable Gaussian
    kernels of width ``step``; the result is normalised to unit variance at every voxel.
    """
    ctrl = _control_axes(step)
    coef = rng.standard_normal(tuple(len(c) for c in ctrl))
    weights = [np.exp(-0.5 * ((np.asarray(a)[:, None] - c[None, :]) / step) ** 2) for a, c in zip(axes, ctrl)]
    out = np.einsum("ia,jb,kc,abc->ijk", *weights, coef, optimize=True)
    norm = [np.sqrt((w**2).sum(1)) for w in weights]
    out /= norm[0][:, None, None] * norm[1][None, :, None] * norm[2][None, None, :]
    return out.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Signal equations
# ---------------------------------------------------------------------------------------------
def _spgr(pd, t1, t2, tr, te, fa):
    """Spoiled gradient echo steady state (T2* taken as T2: the TE is a few ms)."""
    e1 = math.exp(-tr / t1)
    a = math.radians(fa)
    return pd * math.sin(a) * (1 - e1) / (1 - math.cos(a) * e1) * math.exp(-te / t2)


def _spin_echo(pd, t1, t2, tr, te):
    return pd * (1 - math.exp(-tr / t1)) * math.exp(-te / t2)


def _inversion_recovery(pd, t1, t2, tr, te, ti):
    """Magnitude inversion-recovery spin echo."""
    return pd * abs(1 - 2 * math.exp(-ti / t1) + math.exp(-tr / t1)) * math.exp(-te / t2)


def _csf_null_ti(t1_csf: float, tr: float) -> float:
    """Inversion time that nulls a tissue of longitudinal relaxation ``t1_csf`` at repetition ``tr``
    (ln 2 * T1 for TR >> T1)."""
    return t1_csf * math.log(2.0 / (1.0 + math.exp(-tr / t1_csf)))


def _draw_protocols(rng, field_strength: float) -> dict[str, dict]:
    """Per-subject protocol parameters (ms, degrees), drawn in a fixed order for all sequences."""
    # As in BraTS-like protocols: the native T1w is a 2D spin echo, the post-contrast T1w a 3D
    # spoiled gradient echo (so the two differ in more than the enhancement).
    t1 = {"TR": rng.uniform(400.0, 700.0), "TE": rng.uniform(8.0, 15.0), "TI": None, "FA": 90.0}
    t1ce = {"TR": rng.uniform(10.0, 20.0), "TE": rng.uniform(3.0, 6.0), "TI": None, "FA": rng.uniform(25.0, 35.0)}
    t2 = {"TR": rng.uniform(3000.0, 6000.0), "TE": rng.uniform(80.0, 120.0), "TI": None, "FA": 90.0}
    flair_tr = rng.uniform(8000.0, 11000.0)
    flair_te = rng.uniform(80.0, 140.0)
    # The protocol is set from the nominal CSF T1 (the scanner does not know this subject's),
    # within a few percent: CSF is close to, not exactly at, its null point.
    ti = _csf_null_ti(TISSUE_PARAMETERS["csf"][field_strength]["T1"], flair_tr) * rng.uniform(0.985, 1.015)
    flair = {"TR": flair_tr, "TE": flair_te, "TI": ti, "FA": 90.0}
    pd = {"TR": rng.uniform(2500.0, 4000.0), "TE": rng.uniform(10.0, 20.0), "TI": None, "FA": 90.0}
    protocols = {"t1": t1, "t1ce": t1ce, "t2": t2, "flair": flair, "pd": pd}
    return {s: {k: (None if v is None else round(float(v), 2)) for k, v in p.items()} for s, p in protocols.items()}


def _signal(seq: str, p: dict, protocol: dict) -> float:
    """Signal of one compartment with parameters ``p`` (T1, T2, PD; T1 already post-contrast
    for ``t1ce``) under the protocol of the named sequence ``seq`` (TR, TE, TI, FA)."""
    if seq not in SEQUENCE_KINDS:
        raise ValueError(f"no signal model for sequence {seq!r}")
    return protocol_signal({**protocol, "kind": SEQUENCE_KINDS[seq]}, p)


# ---------------------------------------------------------------------------------------------
# Arbitrary protocols
# ---------------------------------------------------------------------------------------------
PROTOCOL_KINDS: tuple[str, ...] = ("se", "spgr", "ir")
# The kind of each named sequence (its signal model).
SEQUENCE_KINDS: dict[str, str] = {"t1": "se", "t1ce": "spgr", "t2": "se", "flair": "ir", "pd": "se"}
KIND_ACQUISITION: dict[str, str] = {
    "se": "spin echo",
    "spgr": "3D spoiled gradient echo",
    "ir": "inversion recovery spin echo",
}
# The names modality_of returns.
PROTOCOL_MODALITIES: tuple[str, ...] = ("T1w", "T1Gd", "T2w", "PDw", "FLAIR", "mixed")
# Mean of the per-subject enhancing-rim gadolinium concentration draw (U(0.15, 0.4) mM).
GD_NOMINAL_CONCENTRATION = 0.275

_PROTOCOL_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_RESERVED_NAMES = ("seg", "tissue", "fractions")


def _number(p: dict, key: str) -> float:
    v = p.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise ValueError(f"protocol key {key!r} must be a number, got {v!r}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"protocol key {key!r} must be finite, got {v!r}")
    return v


def check_protocol(protocol: dict) -> dict:
    """Validate an acquisition protocol and return a normalised copy.

    A protocol is ``{"kind": "se" | "spgr" | "ir", "TR": ms, "TE": ms, "TI": ms or None,
    "FA": degrees, "contrast_agent": bool}``:

    - ``kind``: one of :data:`PROTOCOL_KINDS` (case-insensitive): ``"se"`` spin echo,
      ``"spgr"`` spoiled gradient echo, ``"ir"`` magnitude inversion-recovery spin echo;
    - ``TR`` > 0 and 0 < ``TE`` < ``TR``;
    - ``TI``: required for ``"ir"`` (0 < TI < TR), ``None`` (or absent) otherwise;
    - ``FA`` in (0, 180]; required for ``"spgr"``; 90 for ``"se"``/``"ir"`` (default 90);
    - ``contrast_agent``: optional, default ``False``.

    Other keys are ignored (not copied), so a protocol's sidecar is a valid protocol.

    Returns:
        ``{"kind", "TR", "TE", "TI", "FA", "contrast_agent"}`` with floats (TI ``None`` unless
        ``"ir"``) and a bool.

    Raises:
        ValueError: naming the offending key.
    """
    if not isinstance(protocol, dict):
        raise ValueError(f"a protocol must be a dict, got {type(protocol).__name__}")
    kind = protocol.get("kind")
    if not isinstance(kind, str) or kind.lower() not in PROTOCOL_KINDS:
        raise ValueError(f"protocol key 'kind' must be one of {PROTOCOL_KINDS}, got {kind!r}")
    kind = kind.lower()
    tr, te = _number(protocol, "TR"), _number(protocol, "TE")
    if not tr > 0:
        raise ValueError(f"protocol key 'TR' must be positive, got {tr}")
    if not te > 0:
        raise ValueError(f"protocol key 'TE' must be positive, got {te}")
    if not te < tr:
        raise ValueError(f"protocol key 'TE' ({te}) must be shorter than TR ({tr})")
    ti = protocol.get("TI")
    if kind == "ir":
        if ti is None:
            raise ValueError("protocol key 'TI' is required for an inversion-recovery ('ir') protocol")
        ti = _number(protocol, "TI")
        if not 0 < ti < tr:
            raise ValueError(f"protocol key 'TI' must be in (0, TR={tr}), got {ti}")
    elif ti is not None:
        raise ValueError(f"protocol key 'TI' must be None for a {kind!r} protocol, got {ti!r}")
    if kind == "spgr" or protocol.get("FA") is not None:
        fa = _number(protocol, "FA")
    else:
        fa = 90.0
    if not 0 < fa <= 180:
        raise ValueError(f"protocol key 'FA' must be in (0, 180], got {fa}")
    if kind in ("se", "ir") and fa != 90.0:
        raise ValueError(f"protocol key 'FA' must be 90 for a {kind!r} protocol, got {fa}")
    agent = protocol.get("contrast_agent", False)
    if agent is None:
        agent = False
    if not isinstance(agent, (bool, np.bool_)):
        raise ValueError(f"protocol key 'contrast_agent' must be a bool, got {agent!r}")
    return {"kind": kind, "TR": tr, "TE": te, "TI": ti, "FA": fa, "contrast_agent": bool(agent)}


def modality_of(protocol: dict) -> str:
    """The name a radiologist would give an image of ``protocol`` (the prompt's "Modality").

    Rules (times in ms, flip angle in degrees):

    - ``"ir"``: TI > 1500 (near the CSF null, ln 2 x T1_CSF ~ 2.9 s for a long TR, ~2 s for
      TR ~ 6 s) -> ``"FLAIR"``; a shorter TI -> ``"T1w"`` (T1-weighted inversion recovery,
      ``"T1Gd"`` with contrast agent).
    - ``"se"``: TR < 1000 and TE <= 30 -> ``"T1w"`` (``"T1Gd"`` with contrast agent);
      TR >= 2000 and TE >= 60 -> ``"T2w"``; TR >= 2000 and TE < 40 -> ``"PDw"``; anything
      else (intermediate TR, intermediate TE, or a short TR with a long TE, where T2 decay
      undoes the T1 weighting and CSF outshines white matter) -> ``"mixed"``.
    - ``"spgr"``: FA >= 15 -> ``"T1w"`` (``"T1Gd"`` with contrast agent): well above the Ernst
      angle of brain tissue (about 4-14 degrees for TR 5-30 ms), saturation of the long-T1
      tissues dominates; FA < 15 -> ``"PDw"``: at or below the Ernst angle the steady state
      is close to fully relaxed, the contrast follows proton density.

    The protocol is validated with :func:`check_protocol`.
    """
    p = check_protocol(protocol)
    kind, tr, te, ti, fa = p["kind"], p["TR"], p["TE"], p["TI"], p["FA"]
    t1w = "T1Gd" if p["contrast_agent"] else "T1w"
    if kind == "ir":
        return "FLAIR" if ti > 1500.0 else t1w
    if kind == "spgr":
        return t1w if fa >= 15.0 else "PDw"
    if tr < 1000.0:
        return t1w if te <= 30.0 else "mixed"
    if tr >= 2000.0 and te >= 60.0:
        return "T2w"
    if tr >= 2000.0 and te < 40.0:
        return "PDw"
    return "mixed"


def protocol_signal(protocol: dict, tissue_parameters: dict) -> float:
    """Signal of one compartment with ``{"T1", "T2", "PD"}`` (ms, ms, relative water) under
    ``protocol`` (see :func:`check_protocol`), with the signal equation of its kind (module
    docstring). ``T1`` is used as given: gadolinium shortening is the caller's (see
    :func:`nominal_signals`)."""
    p = check_protocol(protocol)
    pd, t1, t2 = (float(tissue_parameters[k]) for k in ("PD", "T1", "T2"))
    if p["kind"] == "spgr":
        return _spgr(pd, t1, t2, p["TR"], p["TE"], p["FA"])
    if p["kind"] == "se":
        return _spin_echo(pd, t1, t2, p["TR"], p["TE"])
    return _inversion_recovery(pd, t1, t2, p["TR"], p["TE"], p["TI"])


def _gd_t1(t1: float, field_strength: float, concentration: float) -> float:
    """T1 (ms) after gadolinium: 1/T1 = 1/T1_0 + r1 C."""
    return 1.0 / (1.0 / t1 + GD_RELAXIVITY[field_strength] / 1000.0 * concentration)


def nominal_signals(protocol: dict, field_strength: float, gd_concentration: float = GD_NOMINAL_CONCENTRATION) -> dict[str, float]:
    """Signal of every tissue of :data:`TISSUE_PARAMETERS` at its nominal (un-jittered)
    parameters at ``field_strength`` (1.5 or 3.0 T) under ``protocol``: predicted tissue ratios
    (GM/WM, CSF/WM, ...) for evaluations. With ``contrast_agent`` the enhancing rim's T1 is
    shortened by ``gd_concentration`` mM (default: the mean of a subject's draw), as in
    :func:`simulate_subject`. Bias field, scaling, texture and partial volume are not modelled:
    compare ratios, in voxels of nearly pure tissue."""
    fs = float(field_strength)
    if fs not in FIELD_STRENGTHS:
        raise ValueError(f"field_strength must be one of {FIELD_STRENGTHS}, got {field_strength}")
    p = check_protocol(protocol)
    out = {}
    for tissue in TISSUES:
        params = dict(TISSUE_PARAMETERS[tissue][fs])
        if p["contrast_agent"] and tissue == "enhancing":
            params["T1"] = _gd_t1(params["T1"], fs, gd_concentration)
        out[tissue] = protocol_signal(p, params)
    return out


def _rounded(protocol: dict) -> dict:
    return {k: (round(float(v), 2) if isinstance(v, float) else v) for k, v in protocol.items()}


def _draw_one_protocol(rng, field_strength: float, kinds: tuple[str, ...]) -> dict:
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "se":
        tr = math.exp(rng.uniform(math.log(300.0), math.log(8000.0)))
        p = {"kind": kind, "TR": tr, "TE": rng.uniform(8.0, 150.0), "TI": None, "FA": 90.0}
    elif kind == "spgr":
        tr = rng.uniform(5.0, 30.0)
        te = rng.uniform(2.0, min(8.0, tr - 1.0))  # TE < TR also for the shortest TR
        p = {"kind": kind, "TR": tr, "TE": te, "TI": None, "FA": rng.uniform(3.0, 40.0)}
    elif rng.random() < 0.5:  # FLAIR-like: TI around the nominal CSF null
        tr = rng.uniform(6000.0, 11000.0)
        ti = _csf_null_ti(TISSUE_PARAMETERS["csf"][field_strength]["T1"], tr) * rng.uniform(0.9, 1.1)
        p = {"kind": kind, "TR": tr, "TE": rng.uniform(80.0, 140.0), "TI": ti, "FA": 90.0}
    else:  # T1-weighted IR
        tr = rng.uniform(1500.0, 3000.0)
        ti = rng.uniform(400.0, 1100.0)
        p = {"kind": kind, "TR": tr, "TE": rng.uniform(8.0, 20.0), "TI": ti, "FA": 90.0}
    p["contrast_agent"] = False
    return check_protocol(_rounded(p))


def random_protocol(rng, field_strength: float = 3.0, kinds=PROTOCOL_KINDS, exclude=()) -> dict:
    """Draw a protocol (see :func:`check_protocol`) spanning clinical ranges.

    The kind is uniform over ``kinds``; then (ms, degrees; U uniform):

    - ``"se"``: TR log-uniform in [300, 8000], TE ~ U(8, 150), FA 90;
    - ``"spgr"``: TR ~ U(5, 30), TE ~ U(2, min(8, TR - 1)), FA ~ U(3, 40);
    - ``"ir"``: with probability 1/2 FLAIR-like (TR ~ U(6000, 11000), TI = the CSF null of the
      nominal CSF T1 at ``field_strength`` times U(0.9, 1.1), TE ~ U(80, 140)), else T1-IR-like
      (TR ~ U(1500, 3000), TI ~ U(400, 1100), TE ~ U(8, 20)); FA 90.

    No contrast agent. Values are rounded to 2 decimals. A draw whose :func:`modality_of` is in
    ``exclude`` (names from :data:`PROTOCOL_MODALITIES`) is redrawn, to hold a modality out of
    training; after 1000 rejected draws, ValueError.

    Args:
        rng: a ``numpy.random.Generator`` (the draws depend only on its state).
        field_strength: 1.5 or 3.0 T (sets the FLAIR-like inversion time).
        kinds: a subset of :data:`PROTOCOL_KINDS`.
        exclude: modality names to reject.
    """
    fs = float(field_strength)
    if fs not in FIELD_STRENGTHS:
        raise ValueError(f"field_strength must be one of {FIELD_STRENGTHS}, got {field_strength}")
    kinds = (kinds,) if isinstance(kinds, str) else tuple(str(k).lower() for k in kinds)
    if not kinds or any(k not in PROTOCOL_KINDS for k in kinds):
        raise ValueError(f"kinds must be a non-empty subset of {PROTOCOL_KINDS}, got {kinds}")
    exclude = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    unknown = [m for m in exclude if m not in PROTOCOL_MODALITIES]
    if unknown:
        raise ValueError(f"unknown modalities in exclude: {unknown}; known: {PROTOCOL_MODALITIES}")
    for _ in range(1000):
        p = _draw_one_protocol(rng, fs, kinds)
        if modality_of(p) not in exclude:
            return p
    raise ValueError(f"no protocol of kinds {kinds} outside modalities {exclude} in 1000 draws")


def _preset(kind, tr, te, ti=None, fa=90.0) -> dict:
    return check_protocol({"kind": kind, "TR": tr, "TE": te, "TI": ti, "FA": fa})


# Named protocols for evaluations (3 T values where it matters: the FLAIR inversion time).
PROTOCOL_PRESETS: dict[str, dict] = {
    "t1_se": _preset("se", 500.0, 10.0),
    "pd_se": _preset("se", 3000.0, 12.0),
    "t2_se_te60": _preset("se", 4000.0, 60.0),
    "t2_se_te120": _preset("se", 4000.0, 120.0),
    "flair": _preset("ir", 9000.0, 110.0, ti=float(round(_csf_null_ti(TISSUE_PARAMETERS["csf"][3.0]["T1"], 9000.0)))),
    "t1_ir": _preset("ir", 2000.0, 10.0, ti=800.0),
    "spgr_fa5": _preset("spgr", 15.0, 4.0, fa=5.0),
    "spgr_fa30": _preset("spgr", 15.0, 4.0, fa=30.0),
}


def _check_protocols(protocols, sequences: tuple[str, ...]) -> dict[str, dict]:
    """Validate ``simulate_subject``'s ``protocols``: names and parameters."""
    if protocols is None:
        return {}
    if not isinstance(protocols, dict):
        raise ValueError(f"protocols must be a dict name -> protocol, got {type(protocols).__name__}")
    out: dict[str, dict] = {}
    seen: dict[str, str] = {}
    for name, p in protocols.items():
        if not isinstance(name, str) or not _PROTOCOL_NAME.match(name):
            raise ValueError(f"protocol name {name!r} must be letters, digits and underscores")
        low = name.lower()
        if low in sequences:
            raise ValueError(f"protocol name {name!r} collides with a requested sequence")
        if low in _RESERVED_NAMES or low.endswith("_noiseless"):
            raise ValueError(f"protocol name {name!r} is reserved (it would collide with a dataset file)")
        if low in seen:
            raise ValueError(f"protocol names {seen[low]!r} and {name!r} differ only in case")
        seen[low] = name
        try:
            out[name] = check_protocol(p)
        except ValueError as e:
            raise ValueError(f"protocol {name!r}: {e}") from None
    return out


def _stream_key(name: str) -> int:
    """A stable integer for a protocol name (random streams; never Python's salted hash())."""
    return zlib.crc32(name.encode("utf-8"))


# ---------------------------------------------------------------------------------------------
# Subject simulation
# ---------------------------------------------------------------------------------------------
def _check_sequences(sequences) -> tuple[str, ...]:
    if isinstance(sequences, str):
        sequences = (sequences,)
    names = tuple(str(s).lower() for s in sequences)
    for s in names:
        sequence_index(s)  # DataError for an unknown name
    if not names:
        raise ValueError("at least one sequence is required")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate sequences in {names}")
    return names


def _slab_matrix(n: int, spacing: float, thickness: float) -> np.ndarray:
    """Weights ``(n_thick, n)`` averaging contiguous ``thickness`` mm slabs from ``n`` slices of
    ``spacing`` mm (box slice profile, exact overlap of intervals)."""
    n_new = int(math.floor(n * spacing / thickness + 1e-9))
    edges_old = np.arange(n + 1) * spacing
    edges_new = np.arange(n_new + 1) * thickness
    lo = np.maximum(edges_new[:-1, None], edges_old[None, :-1])
    hi = np.minimum(edges_new[1:, None], edges_old[None, 1:])
    w = np.clip(hi - lo, 0, None)
    return (w / w.sum(1, keepdims=True)).astype(np.float32)


def _jittered_parameters(rng, field_strength: float) -> dict[str, dict[str, float]]:
    """Tissue parameters with a per-subject relative jitter of about 5 %: a factor shared by all
    tissues (sd 4 %, for T1, T2 and PD separately) times a per-tissue factor (sd 3 %), each
    clipped at 2.5 sd, so contrasts between tissues vary less than absolute values. CSF is
    nearly pure water: its T1 gets only a 2 % per-tissue jitter, which keeps FLAIR's CSF close
    to its null point."""

    def factor(sd):
        return 1.0 + float(np.clip(sd * rng.standard_normal(), -2.5 * sd, 2.5 * sd))

    shared = {k: factor(0.04) for k in ("T1", "T2", "PD")}
    out = {}
    for tissue in TISSUES:
        base = TISSUE_PARAMETERS[tissue][field_strength]
        out[tissue] = {}
        for k in ("T1", "T2", "PD"):
            if (tissue, k) == ("csf", "T1"):
                out[tissue][k] = base[k] * factor(0.02)
            else:
                out[tissue][k] = base[k] * shared[k] * factor(0.03)
    out["csf"]["PD"] = min(out["csf"]["PD"], 1.0)
    return out


def _draw_tumours(rng, n: int) -> list[dict]:
    """Tumour centres (template mm), radii and compartment thresholds."""
    sites, depth = _tumour_sites()
    tumours: list[dict] = []
    for _ in range(n):
        radius = rng.uniform(8.0, 22.0) if n == 1 else rng.uniform(7.0, 17.0)
        ok = np.flatnonzero(depth >= 0.7 * radius + 6.0)
        if ok.size == 0:
            ok = np.arange(len(sites))
        for _try in range(10):
            centre = sites[ok[rng.integers(ok.size)]] + rng.uniform(-2.0, 2.0, size=3)
            if all(np.linalg.norm(centre - t["centre"]) > 1.1 * (radius + t["radius"]) for t in tumours):
                break
        tumours.append(
            {
                "centre": centre,
                "radius": float(radius),
                "core": float(rng.uniform(0.35, 0.7)),  # necrosis where rho < core
                "oedema": float(rng.uniform(1.4, 2.2)),  # oedema where 1 <= rho < oedema
                "irregularity": float(rng.uniform(0.1, 0.25)),
                "push": float(rng.uniform(0.25, 0.5)) * radius,  # mass effect, mm
            }
        )
    return tumours


def _draw_field_strength(rng) -> float:
    """The first draw of a subject's stream: 3 T with probability 0.6, else 1.5 T."""
    return FIELD_STRENGTHS[int(rng.random() < 0.6)]


def subject_field_strength(seed: int) -> float:
    """The field strength :func:`simulate_subject` draws for ``seed`` (when not forced), without
    simulating: the first draw of the subject's stream."""
    return _draw_field_strength(np.random.default_rng([int(seed), 0]))


def simulate_subject(
    seed: int,
    spacing: float = 2.0,
    snr: float = 30.0,
    sequences=("t1", "t1ce", "t2", "flair"),
    field_strength: float | None = None,
    slice_thickness: float | None = None,
    n_tumours: int | None = None,
    protocols: dict[str, dict] | None = None,
    dce: dict | bool | None = None,
) -> PhantomSubject:
    """Simulate one subject.

    Args:
        seed: non-negative integer; the same arguments always give the same subject.
        spacing: isotropic voxel size (mm) of the simulation grid.
        snr: mean noiseless white-matter signal over the noise standard deviation.
        sequences: names from :data:`mrsynth.sequences.SEQUENCES` to image.
        field_strength: 1.5 or 3.0 T; ``None`` draws it (3 T with probability 0.6).
        slice_thickness: if given (mm, >= ``spacing``), the images are averaged into contiguous
            slabs of that thickness along the last (axial) axis: the grid becomes
            ``spacing x spacing x slice_thickness``. The same seed without it gives the
            matching high-resolution subject.
        n_tumours: force the number of tumours (0-3 typical); ``None`` draws 0-3.
        protocols: extra images, name -> protocol (:func:`check_protocol`), imaged like the
            named sequences (same anatomy, texture and shared bias field; their own bias,
            scaling and noise streams keyed on the name, gadolinium T1 shortening with
            ``contrast_agent``). Names: letters, digits and underscores, none of the requested
            ``sequences`` (nor ``seg``, ``tissue``, ``fractions``, ``*_noiseless``). They go
            into ``images``, ``noiseless``, ``noise_sigma`` and ``sidecars`` (``modality`` from
            :func:`modality_of`, plus ``kind``); the named sequences' images do not change.
        dce: a dynamic contrast-enhanced series too (``True`` or overrides of
            :data:`mrsynth.data.dce.DCE_DEFAULTS`): ``images["dce"]`` is ``(X, Y, Z, F)``, the
            pre-contrast frame(s) then the post-contrast frames of a 3D SPGR, each compartment
            enhancing as the extended Tofts model with a population input function says
            (:mod:`mrsynth.data.dce`; parameters :data:`~mrsynth.data.dce.DCE_PARAMETERS`);
            ``dce_washin`` and ``dce_washout`` are its derived maps (3D), each with a noiseless
            twin (the maps of the noiseless series). Own bias, scaling and noise streams (keyed
            on the name ``dce``); one noise sigma for all frames, from the pre-contrast frame.
            The sidecar holds the frame times. Nothing else changes.

    Returns:
        :class:`PhantomSubject`.
    """
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if not snr > 0:
        raise ValueError(f"snr must be positive, got {snr}")
    sequences = _check_sequences(sequences)
    extra = _check_protocols(protocols, sequences)
    spacing = float(spacing)
    if slice_thickness is not None:
        slice_thickness = float(slice_thickness)
        if slice_thickness < spacing:
            raise ValueError(f"slice_thickness ({slice_thickness}) must be >= spacing ({spacing})")
    if field_strength is not None:
        field_strength = float(field_strength)
        if field_strength not in FIELD_STRENGTHS:
            raise ValueError(f"field_strength must be one of {FIELD_STRENGTHS}, got {field_strength}")

    gm_t, wm_t, csf_t, affine = load_anatomy(spacing)
    shape = gm_t.shape
    origin = affine[:3, 3]
    axes = [origin[i] + np.arange(shape[i]) * spacing for i in range(3)]

    # --- subject-level draws (one stream, fixed order) ---------------------------------------
    rng = np.random.default_rng([seed, 0])
    drawn_field = _draw_field_strength(rng)
    fs = drawn_field if field_strength is None else field_strength
    age = int(rng.integers(18, 86))
    sex = "M" if rng.random() < 0.5 else "F"
    vendor = VENDORS[int(rng.integers(len(VENDORS)))]
    params = _jittered_parameters(rng, fs)
    gd_conc = float(rng.uniform(0.15, 0.4))  # mM in the enhancing rim
    n_t = int(rng.choice(4, p=[0.1, 0.5, 0.3, 0.1]))
    n_t = n_t if n_tumours is None else int(n_tumours)

    # Small affine about the brain centre, then a smooth displacement (subject -> template).
    angles = np.radians(rng.uniform(-5.0, 5.0, size=3))
    scales = rng.uniform(0.95, 1.05, size=3)
    shift = rng.uniform(-3.0, 3.0, size=3)
    deform_amp = rng.uniform(1.5, 3.5)
    deform = [deform_amp * _smooth_field(rng, axes, _DEFORM_CTRL_MM) for _ in range(3)]
    tumours = _draw_tumours(rng, n_t)
    shapes = [_smooth_field(rng, axes, _TUMOUR_SHAPE_CTRL_MM) for _ in tumours]
    texture = _smooth_field(rng, axes, _T1_TEXTURE_CTRL_MM)
    bias_shared_amp = rng.uniform(0.04, 0.12)
    bias_shared = _smooth_field(rng, axes, _BIAS_CTRL_MM)

    # --- geometry: output voxel -> template world coordinates -------------------------------
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rot = (
        np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    )
    lin = rot @ np.diag(scales)
    centre = np.array([0.0, -18.0, 18.0])  # approximate centre of the MNI brain
    offset = centre + shift - lin @ centre
    grid = [a.reshape([-1 if i == j else 1 for j in range(3)]) for i, a in enumerate(axes)]
    y = [
        (lin[j, 0] * grid[0] + lin[j, 1] * grid[1] + lin[j, 2] * grid[2] + offset[j] + deform[j]).astype(np.float32)
        for j in range(3)
    ]

    # Tumour shells on the pre-mass-effect coordinates: normalised radius rho (1 = rim edge).
    a_core = a_tum = a_oed = None
    for t, shp in zip(tumours, shapes):
        v = [y[j] - np.float32(t["centre"][j]) for j in range(3)]
        r = np.sqrt(v[0] ** 2 + v[1] ** 2 + v[2] ** 2)
        rho = r / (t["radius"] * (1 + t["irregularity"] * np.clip(shp, -2, 2)))
        width = spacing / t["radius"]  # one voxel of partial volume at the edges

        def soft(thr, rho=rho, width=width):
            return np.clip(0.5 + (thr - rho) / width, 0, 1)

        c, tu, oe = soft(t["core"]), soft(1.0), soft(t["oedema"])
        a_core = c if a_core is None else np.maximum(a_core, c)
        a_tum = tu if a_tum is None else np.maximum(a_tum, tu)
        a_oed = oe if a_oed is None else np.maximum(a_oed, oe)
        # Mass effect: sample the template closer to the centre, i.e. push tissue outward.
        length = 1.2 * t["radius"]
        g = (t["push"] / length) * np.exp(0.5 * (1 - (r / length) ** 2))
        y = [np.float32(t["centre"][j]) + v[j] * (1 - g) for j in range(3)]

    coords = np.stack([(y[j] - np.float32(origin[j])) / np.float32(spacing) for j in range(3)])
    del y

    def warp(a):
        return ndimage.map_coordinates(a, coords, order=1, mode="constant", cval=0.0, prefilter=False)

    gm, wm, csf = warp(gm_t), warp(wm_t), warp(csf_t)
    del coords
    total = gm + wm + csf
    over = total > 1
    for a in (gm, wm, csf):
        a[over] /= total[over]
    brain = np.minimum(total, 1.0)

    # Compartment fractions: tumour replaces tissue; oedema infiltrates WM (and GM, less).
    if tumours:
        core = a_core * brain
        rim = (a_tum - a_core) * brain
        keep = 1 - a_tum
        gm, wm, csf = gm * keep, wm * keep, csf * keep
        e = np.clip(a_oed - a_tum, 0, 1)
        oed = e * (wm + 0.5 * gm)
        wm = wm * (1 - e)
        gm = gm * (1 - 0.5 * e)
    else:
        core = rim = oed = np.zeros_like(gm)
    fractions = {"csf": csf, "gm": gm, "wm": wm, "necrosis": core, "enhancing": rim, "oedema": oed}
    fractions = {k: v.astype(np.float32, copy=False) for k, v in fractions.items()}

    # --- images -------------------------------------------------------------------------------
    protocols = _draw_protocols(np.random.default_rng([seed, 1]), fs)
    r1 = GD_RELAXIVITY[fs] / 1000.0  # /mM/ms
    normal_tex = 1 + 0.02 * texture
    tumour_tex = 1 + 0.06 * texture
    normal = ("csf", "gm", "wm")
    seq_rngs = {s: np.random.default_rng([seed, 2, sequence_index(s)]) for s in sequences}

    noiseless = {}
    for s in sequences:
        p = {k: dict(v) for k, v in params.items()}
        if s == "t1ce":
            p["enhancing"]["T1"] = 1.0 / (1.0 / p["enhancing"]["T1"] + r1 * gd_conc)
        sig = {k: _signal(s, p[k], protocols[s]) for k in TISSUES}
        img = sum(sig[k] * fractions[k] for k in normal) * normal_tex
        img += sum(sig[k] * fractions[k] for k in TISSUES if k not in normal) * tumour_tex
        srng = seq_rngs[s]
        bias = np.exp(bias_shared_amp * bias_shared + srng.uniform(0.01, 0.04) * _smooth_field(srng, axes, _BIAS_CTRL_MM))
        scale = 10 ** srng.uniform(2.0, 3.5)
        noiseless[s] = (img * bias * scale).astype(np.float32)
    # Extra protocols: the same imaging, streams keyed on the name (tags 6 and 7), after the
    # named sequences so that those are untouched.
    for name, prot in extra.items():
        p = {k: dict(v) for k, v in params.items()}
        if prot["contrast_agent"]:
            p["enhancing"]["T1"] = 1.0 / (1.0 / p["enhancing"]["T1"] + r1 * gd_conc)
        sig = {k: protocol_signal(prot, p[k]) for k in TISSUES}
        img = sum(sig[k] * fractions[k] for k in normal) * normal_tex
        img += sum(sig[k] * fractions[k] for k in TISSUES if k not in normal) * tumour_tex
        srng = np.random.default_rng([seed, 6, _stream_key(name)])
        bias = np.exp(bias_shared_amp * bias_shared + srng.uniform(0.01, 0.04) * _smooth_field(srng, axes, _BIAS_CTRL_MM))
        scale = 10 ** srng.uniform(2.0, 3.5)
        noiseless[name] = (img * bias * scale).astype(np.float32)

    dce_cfg = None
    if dce:
        from .dce import DCE_DEFAULTS, tissue_curves

        dce_cfg = {**DCE_DEFAULTS, **(dce if isinstance(dce, dict) else {})}
        unknown = sorted(set(dce_cfg) - set(DCE_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown dce settings {unknown}; known: {sorted(DCE_DEFAULTS)}")
        times, conc, curves = tissue_curves(params, GD_RELAXIVITY[fs], dce_cfg)
        img = sum(curves[k].astype(np.float32) * fractions[k][..., None] for k in normal) * normal_tex[..., None]
        img += sum(curves[k].astype(np.float32) * fractions[k][..., None] for k in TISSUES if k not in normal) * tumour_tex[..., None]
        srng = np.random.default_rng([seed, 8, _stream_key("dce")])
        bias = np.exp(bias_shared_amp * bias_shared + srng.uniform(0.01, 0.04) * _smooth_field(srng, axes, _BIAS_CTRL_MM))
        scale = 10 ** srng.uniform(2.0, 3.5)
        noiseless["dce"] = (img * (bias * scale)[..., None]).astype(np.float32)
        del img

    out_affine = affine.copy()
    voxel_size = [spacing, spacing, spacing]
    if slice_thickness is not None and slice_thickness != spacing:
        w = _slab_matrix(shape[2], spacing, slice_thickness)

        def thick(a):
            out = np.tensordot(a, w, axes=([2], [1]))  # the new axis comes last
            return np.ascontiguousarray(np.moveaxis(out, -1, 2) if a.ndim == 4 else out, dtype=np.float32)

        noiseless = {s: thick(a) for s, a in noiseless.items()}
        fractions = {k: thick(a) for k, a in fractions.items()}
        out_affine[:3, 2] *= slice_thickness / spacing
        out_affine[:3, 3] += out_affine[:3, 2] / 2 - affine[:3, 2] / 2
        voxel_size = [spacing, spacing, slice_thickness]

    # Label: the largest of {normal tissue, necrosis, enhancing, oedema} inside the brain.
    brain_frac = sum(fractions.values())
    brain_mask = brain_frac >= 0.5
    stack = np.stack([fractions["csf"] + fractions["gm"] + fractions["wm"], fractions["necrosis"], fractions["enhancing"], fractions["oedema"]])
    label = np.array([0, 1, 4, 2], dtype=np.uint8)[stack.argmax(0)]
    label[~brain_mask] = 0
    del stack
    tissue = (np.stack([fractions[k] for k in TISSUES]).argmax(0) + 1).astype(np.uint8)
    tissue[~brain_mask] = 0

    # --- noise: Rician, sigma from the mean noiseless white-matter signal ---------------------
    wm_region = fractions["wm"] >= 0.9
    if wm_region.sum() < 10:
        wm_region = fractions["wm"] >= 0.5
    images, sigmas = {}, {}
    for s in (*sequences, *extra, *(("dce",) if dce_cfg else ())):
        clean = noiseless[s]
        sigma = float((clean[..., 0] if clean.ndim == 4 else clean)[wm_region].mean()) / snr
        key = [seed, 3, sequence_index(s)] if s in sequences else [seed, 7, _stream_key(s)]
        nrng = np.random.default_rng(key)
        n1 = nrng.standard_normal(clean.shape, dtype=np.float32)
        n2 = nrng.standard_normal(clean.shape, dtype=np.float32)
        n1 *= sigma
        n1 += clean
        n2 *= sigma
        images[s] = np.sqrt(n1 * n1 + n2 * n2, dtype=np.float32)
        sigmas[s] = sigma

    scanner = f"{fs:.1f} {vendor}"
    if dce_cfg:
        from .dce import dce_maps

        b = int(dce_cfg["baseline"])
        for key, series in (("images", images["dce"]), ("noiseless", noiseless["dce"])):
            washin, washout, early = dce_maps(series, times, b, float(dce_cfg["early_minutes"]))
            target = images if key == "images" else noiseless
            target["dce_washin"], target["dce_washout"] = washin, washout
    sidecars = {
        s: {
            "age": age,
            "sex": sex,
            "field_strength": fs,
            "vendor": vendor,
            "scanner": scanner,
            "modality": MODALITY[s],
            "sequence": s,
            "acquisition": ACQUISITION[s],
            "voxel_size": [float(v) for v in voxel_size],
            "TR": protocols[s]["TR"],
            "TE": protocols[s]["TE"],
            "TI": protocols[s]["TI"],
            "FA": protocols[s]["FA"],
            "snr": float(snr),
            "contrast_agent": s == "t1ce",
        }
        for s in sequences
    }
    for name, prot in extra.items():
        acquisition = KIND_ACQUISITION[prot["kind"]] + (", post-contrast" if prot["contrast_agent"] else "")
        sidecars[name] = {
            "age": age,
            "sex": sex,
            "field_strength": fs,
            "vendor": vendor,
            "scanner": scanner,
            "modality": modality_of(prot),
            "sequence": name,
            "acquisition": acquisition,
            "voxel_size": [float(v) for v in voxel_size],
            "TR": prot["TR"],
            "TE": prot["TE"],
            "TI": prot["TI"],
            "FA": prot["FA"],
            "snr": float(snr),
            "contrast_agent": prot["contrast_agent"],
            "kind": prot["kind"],
        }
    if dce_cfg:
        from .dce import DCE_PARAMETERS, POPULATION_AIF, frame_times

        _, t0 = frame_times(int(dce_cfg["frames"]), float(dce_cfg["interval_s"]), int(dce_cfg["baseline"]))
        common = {"age": age, "sex": sex, "field_strength": fs, "vendor": vendor, "scanner": scanner,
                  "voxel_size": [float(v) for v in voxel_size], "TR": float(dce_cfg["TR"]), "TE": float(dce_cfg["TE"]),
                  "TI": None, "FA": float(dce_cfg["FA"]), "snr": float(snr), "contrast_agent": True}
        frames_s = [round(float(t) * 60.0, 3) for t in times]
        sidecars["dce"] = {**common, "modality": "DCE", "sequence": "dce",
                           "acquisition": "3D spoiled gradient echo, dynamic contrast-enhanced",
                           "frame_times_s": frames_s, "baseline_frames": int(dce_cfg["baseline"]),
                           "bolus_arrival_s": round(t0 * 60.0, 3),
                           "input_function": "population bi-exponential (Weinmann 1984, Tofts & Kermode 1991)",
                           "pharmacokinetic_model": "extended Tofts"}
        for name, what in (("dce_washin", "wash-in"), ("dce_washout", "wash-out")):
            sidecars[name] = {**common, "modality": f"DCE {what}", "sequence": name,
                              "acquisition": f"DCE {what} map (signal per minute, frames {frames_s[0]}-"
                                             f"{frames_s[early] if what == 'wash-in' else frames_s[-1]} s)",
                              "derived_from": "dce", "early_frame": early}
            sigmas[name] = float("nan")  # a derived map: its noise is not Gaussian of one sigma
    info = {
        "seed": seed,
        "field_strength": fs,
        "tissue_parameters": params,
        "gd_concentration_mM": gd_conc,
        "tumours": [{**t, "centre": [round(float(c), 2) for c in t["centre"]]} for t in tumours],
        "protocols": {**{s: protocols[s] for s in sequences}, **{n: dict(p) for n, p in extra.items()}},
    }
    if dce_cfg:
        info["dce"] = {"settings": dce_cfg, "parameters": DCE_PARAMETERS, "input_function": POPULATION_AIF,
                       "frame_times_min": [float(t) for t in times],
                       "concentration_mM": {k: [float(v) for v in c] for k, c in conc.items()}}
    return PhantomSubject(
        images=images,
        noiseless=noiseless,
        label=label,
        affine=out_affine,
        sidecars=sidecars,
        brain_mask=brain_mask,
        tissue=tissue,
        fractions=fractions,
        noise_sigma=sigmas,
        info=info,
    )


# ---------------------------------------------------------------------------------------------
# Datasets on disk
# ---------------------------------------------------------------------------------------------
LAYOUTS = ("brats", "nnseq2seq")


def subject_seed(seed: int, index: int) -> int:
    """Seed of subject ``index`` of a dataset generated with ``seed`` (disjoint across seeds
    for fewer than 100003 subjects)."""
    return int(seed) * 100003 + int(index)


def _kept_sequences(sub_seed: int, sequences: tuple[str, ...], drop_max: int) -> tuple[str, ...]:
    """The sequences a case keeps after dropping a random 0..drop_max of them (never all)."""
    if drop_max <= 0 or len(sequences) == 1:
        return sequences
    rng = np.random.default_rng([sub_seed, 4])
    n_drop = int(rng.integers(0, min(drop_max, len(sequences) - 1) + 1))
    dropped = set(rng.choice(len(sequences), size=n_drop, replace=False).tolist())
    return tuple(s for i, s in enumerate(sequences) if i not in dropped)


def save_fractions(subject: PhantomSubject, dest) -> Path:
    """Write the compartment fractions as one 4D NIfTI ``(X, Y, Z, 6)`` in :data:`TISSUES` order,
    stored as uint8 with a scale slope of 1/255 (readers get floats in [0, 1], to 1/510)."""
    import nibabel as nib

    from ..io import atomic_path

    q = np.stack([subject.fractions[k] for k in TISSUES], axis=-1)
    img = nib.Nifti1Image(np.round(np.clip(q, 0, 1) * 255).astype(np.uint8), np.asarray(subject.affine, np.float64))
    img.header.set_slope_inter(1.0 / 255.0, 0.0)
    with atomic_path(dest) as tmp:
        nib.save(img, str(tmp))
    return Path(dest)


DCE_IMAGES = ("dce", "dce_washin", "dce_washout")


def save_dce(subject: PhantomSubject, folder, case: str) -> list[Path]:
    """Write a subject's DCE series (4D, frame interval as the fourth voxel size, in seconds) and
    its derived maps, with noiseless twins and sidecars, as ``<folder>/<case>_<name>...``."""
    from ..io import save_series

    folder = Path(folder)
    written = []
    interval = float(np.diff(subject.sidecars["dce"]["frame_times_s"][:2])[0])
    for name in DCE_IMAGES:
        for suffix, arrays in (("", subject.images), ("_noiseless", subject.noiseless)):
            dest = folder / f"{case}_{name}{suffix}.nii.gz"
            if name == "dce":
                save_series(arrays[name], subject.affine, dest, interval)
            else:
                save_nifti(arrays[name], subject.affine, dest)
            written.append(dest)
        save_json(subject.sidecars[name], folder / f"{case}_{name}.json")
    return written


def preset_image_name(key: str) -> str:
    """The image name :func:`write_dataset` gives preset ``key``: the key, or ``preset_<key>``
    when the key is also a named sequence (:data:`mrsynth.sequences.SEQUENCES`, e.g. ``flair``)."""
    if key not in PROTOCOL_PRESETS:
        raise ValueError(f"unknown preset {key!r}; known: {sorted(PROTOCOL_PRESETS)}")
    return f"preset_{key}" if key in SEQUENCES else key


def _write_case(i: int, job: dict):
    """Simulate and write case ``i`` of :func:`write_dataset` (``job``: its settings); return
    ``(case id, subject seed, missing sequences, protocol names)``. A function of ``i`` and the
    settings alone, so that cases can be written by worker processes in any order."""
    out, layout, sequences, dce = job["out"], job["layout"], job["sequences"], job["dce"]
    case = f"PHANTOM_{i:04d}"
    sub_seed = subject_seed(job["seed"], i)
    kept = _kept_sequences(sub_seed, sequences, job["drop_max"])
    extra = {}
    if job["n_protocols"]:
        prng = np.random.default_rng([sub_seed, 5])
        fs = subject_field_strength(sub_seed)
        extra = {f"p{j:02d}": random_protocol(prng, fs, job["protocol_kinds"], job["exclude_modalities"])
                 for j in range(job["n_protocols"])}
    extra.update(job["fixed"])
    subj = simulate_subject(
        sub_seed, spacing=job["spacing"], snr=job["snr"], sequences=kept, slice_thickness=job["slice_thickness"],
        protocols=extra or None, dce=dce,
    )
    if layout == "brats":
        folder = out / case
        for s in (*kept, *extra):
            save_nifti(subj.images[s], subj.affine, folder / f"{case}_{s}.nii.gz")
            save_nifti(subj.noiseless[s], subj.affine, folder / f"{case}_{s}_noiseless.nii.gz")
            save_json(subj.sidecars[s], folder / f"{case}_{s}.json")
        if dce:
            save_dce(subj, folder, case)
        save_nifti(subj.label, subj.affine, folder / f"{case}_seg.nii.gz", dtype=np.uint8)
        save_nifti(subj.tissue, subj.affine, folder / f"{case}_tissue.nii.gz", dtype=np.uint8)
        save_fractions(subj, folder / f"{case}_fractions.nii.gz")
    else:
        for s in kept:
            stem = f"{case}_{sequences.index(s):04d}"
            save_nifti(subj.images[s], subj.affine, out / "imagesTr" / f"{stem}.nii.gz")
            save_json(subj.sidecars[s], out / "imagesTr" / f"{stem}.json")
            save_nifti(subj.noiseless[s], subj.affine, out / "noiselessTr" / f"{stem}.nii.gz")
        save_nifti(subj.label, subj.affine, out / "labelsTr" / f"{case}.nii.gz", dtype=np.uint8)
        save_nifti(subj.tissue, subj.affine, out / "tissueTr" / f"{case}.nii.gz", dtype=np.uint8)
        save_fractions(subj, out / "fractionsTr" / f"{case}.nii.gz")
    return case, sub_seed, [s for s in sequences if s not in kept], list(extra)


def write_dataset(
    out,
    subjects: int,
    spacing: float = 2.0,
    seed: int = 0,
    layout: str = "brats",
    snr: float = 30.0,
    sequences=("t1", "t1ce", "t2", "flair"),
    drop_max: int = 0,
    slice_thickness=None,
    progress: bool = True,
    protocols: int = 0,
    protocol_kinds=PROTOCOL_KINDS,
    exclude_modalities=(),
    presets: list[str] | None = None,
    dce: dict | bool | None = None,
    workers: int = 0,
) -> list[str]:
    """Simulate ``subjects`` cases and write them under ``out``; return the case ids.

    Case ``i`` is ``PHANTOM_{i:04d}``, simulated with seed :func:`subject_seed` ``(seed, i)``.

    Layouts:
        ``"brats"``: ``<out>/<case>/<case>_<seq>.nii.gz`` (noisy), ``<case>_<seq>_noiseless.nii.gz``,
        ``<case>_<seq>.json`` (sidecar), ``<case>_seg.nii.gz``, ``<case>_tissue.nii.gz`` (tissue map,
        :data:`TISSUE_CODES`), ``<case>_fractions.nii.gz`` (compartment fractions, see
        :func:`save_fractions`).
        ``"nnseq2seq"``: ``<out>/dataset.json``, ``<out>/imagesTr/<case>_<XXXX>.nii.gz`` (+ ``.json``
        sidecar), ``<out>/noiselessTr/<case>_<XXXX>.nii.gz``, ``<out>/labelsTr/<case>.nii.gz``,
        ``<out>/tissueTr/<case>.nii.gz``, ``<out>/fractionsTr/<case>.nii.gz``;
        ``XXXX`` is the sequence's position in ``sequences``.
        Both also get ``<out>/phantom.json`` (generation parameters, cases, missing sequences).

    ``drop_max > 0`` removes a random 0..``drop_max`` sequences from each case (at least one
    always remains); their files are not written and are listed under ``missing``.

    Protocols (brats layout only, ValueError for ``"nnseq2seq"``): each case also gets
    ``protocols`` random protocols, drawn in order with :func:`random_protocol` from
    ``numpy.random.default_rng([subject seed, 5])`` at the subject's field strength
    (:func:`subject_field_strength`), with ``protocol_kinds`` and ``exclude=exclude_modalities``,
    named ``p00``, ``p01``, ...; and the ``presets`` (keys of :data:`PROTOCOL_PRESETS`), named
    :func:`preset_image_name` ``(key)``: the key itself, or ``preset_<key>`` for a key that is
    also a named sequence (``flair``), so that it never overwrites the named sequence's files.
    They are written like the sequences (``<case>_<name>.nii.gz``, ``_noiseless``, ``.json``;
    the sidecar describes the protocol) and never dropped; ``phantom.json`` lists them per case
    under ``protocols``.

    DCE (brats layout only): ``dce=True`` (or settings, see :func:`simulate_subject`) also writes
    ``<case>_dce.nii.gz``, a 4D NIfTI ``(X, Y, Z, F)`` whose fourth voxel size is the frame
    interval in seconds (``xyzt_units`` mm, s), its noiseless twin and sidecar (frame times), and
    the derived maps ``<case>_dce_washin`` / ``<case>_dce_washout`` (3D, with twins and sidecars).
    They are never dropped.

    ``workers > 1`` writes the cases in that many processes; every case depends on its index
    and the settings alone, so the files are the same for any number of workers.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    subjects, drop_max = int(subjects), int(drop_max)
    if subjects < 0 or drop_max < 0:
        raise ValueError("subjects and drop_max must be non-negative")
    sequences = _check_sequences(sequences)
    n_protocols = int(protocols)
    if n_protocols < 0:
        raise ValueError(f"protocols must be non-negative, got {protocols}")
    presets = [presets] if isinstance(presets, str) else list(presets or ())
    unknown = [k for k in presets if k not in PROTOCOL_PRESETS]
    if unknown:
        raise ValueError(f"unknown presets {unknown}; known: {sorted(PROTOCOL_PRESETS)}")
    if len(set(presets)) != len(presets):
        raise ValueError(f"duplicate presets in {presets}")
    if layout != "brats" and (n_protocols > 0 or presets or dce):
        raise ValueError("protocols and DCE series are written in the brats layout only")
    protocol_kinds = (protocol_kinds,) if isinstance(protocol_kinds, str) else tuple(protocol_kinds)
    exclude_modalities = (exclude_modalities,) if isinstance(exclude_modalities, str) else tuple(exclude_modalities)
    preset_names = {k: preset_image_name(k) for k in presets}
    fixed = {preset_names[k]: PROTOCOL_PRESETS[k] for k in presets}
    if n_protocols:  # fail early on bad kinds / modalities (this draw is discarded)
        random_protocol(np.random.default_rng(0), 3.0, protocol_kinds, exclude_modalities)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    from tqdm.auto import tqdm

    job = dict(out=out, seed=seed, layout=layout, spacing=spacing, snr=snr, sequences=sequences, drop_max=drop_max,
               slice_thickness=slice_thickness, n_protocols=n_protocols, protocol_kinds=protocol_kinds,
               exclude_modalities=exclude_modalities, fixed=fixed, dce=dce)
    workers = int(workers or 0)
    if workers > 1 and subjects > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(workers, subjects)) as pool:
            done = list(tqdm(pool.map(_write_case, range(subjects), [job] * subjects), total=subjects, desc="phantom",
                             unit="case", disable=not progress))
    else:
        done = [_write_case(i, job) for i in tqdm(range(subjects), desc="phantom", unit="case", disable=not progress)]
    cases = [d[0] for d in done]
    seeds = {d[0]: d[1] for d in done}
    missing = {d[0]: d[2] for d in done}
    case_protocols = {d[0]: d[3] for d in done}

    if layout == "nnseq2seq":
        save_json(
            {
                "name": "Phantom",
                "description": "mrsynth phantom: simulated multi-sequence brain MRI with tumours",
                "channel_names": {str(i): s for i, s in enumerate(sequences)},
                "labels": dict(LABELS),
                "numTraining": len(cases),
                "file_ending": ".nii.gz",
                "missing": {c: [sequences.index(s) for s in missing[c]] for c in cases},
            },
            out / "dataset.json",
        )
    save_json(
        {
            "generator": "mrsynth.data.phantom",
            "layout": layout,
            "subjects": subjects,
            "spacing": float(spacing),
            "seed": int(seed),
            "subject_seeds": seeds,
            "snr": float(snr),
            "sequences": list(sequences),
            "drop_max": drop_max,
            "slice_thickness": None if slice_thickness is None else float(slice_thickness),
            "labels": dict(LABELS),
            "cases": cases,
            "missing": missing,
            "random_protocols": n_protocols,
            "protocol_kinds": list(protocol_kinds),
            "exclude_modalities": list(exclude_modalities),
            "presets": preset_names,
            "protocols": case_protocols,
            "dce": None if not dce else (dict(dce) if isinstance(dce, dict) else True),
        },
        out / "phantom.json",
    )
    return cases
