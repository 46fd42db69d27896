"""Dynamic contrast-enhanced (DCE) series for the phantom: a pharmacokinetic model with a known answer.

A DCE-MRI series is one T1-weighted spoiled gradient echo volume before the contrast agent and
``frames`` volumes after it. The agent's tissue concentration follows the **extended Tofts model**

    C_t(t) = v_p C_p(t) + K^trans * integral_0^t C_p(s) exp(-k_ep (t - s)) ds,   k_ep = K^trans / v_e,

driven by a **population arterial input function** (plasma concentration, mM), the bi-exponential
of Weinmann et al. 1984 as used by Tofts & Kermode 1991:

    C_p(t) = D (a_1 exp(-m_1 (t - t_0)) + a_2 exp(-m_2 (t - t_0)))   for t >= t_0, else 0,

with D = 0.1 mmol/kg, a = (3.99, 4.78) kg/l, m = (0.144, 0.0111) /min and t_0 the bolus arrival.
For that input the model has a closed form (:func:`tofts_closed_form`); the simulator integrates
numerically (:func:`tofts_concentration`, any input function), and the tests hold the two
together. The signal is the SPGR equation with T1 shortened by the agent,
``1/T1(t) = 1/T1_0 + r_1 C_t(t)``.

Tissue parameters (:data:`DCE_PARAMETERS`, per compartment; illustrative values in the ranges
reported for glioma DCE, e.g. Sourbron & Buckley 2013, Larsson et al. 2009): the intact
blood-brain barrier leaves grey and white matter with blood volume only (K^trans 0), the
enhancing rim leaks fast (high K^trans and k_ep: early peak, then wash-out as the plasma
clears), necrosis and oedema take the agent up slowly and keep it (persistent enhancement).

Derived maps (sequences of their own, as in the Seq2Seq paper's breast data): ``wash-in``, the
signal gained per minute from the pre-contrast frame to the first frame after
``early_minutes``; ``wash-out``, the signal change per minute from that frame to the last
(negative where the agent washes out).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "POPULATION_AIF",
    "DCE_PARAMETERS",
    "DCE_DEFAULTS",
    "population_aif",
    "tofts_concentration",
    "tofts_closed_form",
    "spgr_signal",
    "frame_times",
    "dce_maps",
    "tissue_curves",
]

#: Weinmann et al. 1984 / Tofts & Kermode 1991 bi-exponential plasma input: dose mmol/kg,
#: amplitudes kg/l, rates /min.
POPULATION_AIF = {"D": 0.1, "a": (3.99, 4.78), "m": (0.144, 0.0111)}

#: Extended Tofts parameters per compartment: K^trans (/min), v_e, v_p (fractions).
DCE_PARAMETERS: dict[str, dict[str, float]] = {
    "csf": {"Ktrans": 0.0, "ve": 0.5, "vp": 0.0},
    "gm": {"Ktrans": 0.0, "ve": 0.2, "vp": 0.05},
    "wm": {"Ktrans": 0.0, "ve": 0.2, "vp": 0.025},
    "necrosis": {"Ktrans": 0.02, "ve": 0.45, "vp": 0.005},
    "enhancing": {"Ktrans": 0.4, "ve": 0.15, "vp": 0.1},
    "oedema": {"Ktrans": 0.03, "ve": 0.4, "vp": 0.02},
}

#: The acquisition: 3D SPGR (TR, TE in ms, FA in degrees), ``frames`` post-contrast volumes
#: every ``interval_s`` seconds after ``baseline`` pre-contrast ones; the bolus arrives half an
#: interval before the first post-contrast frame; wash-in up to ``early_minutes``.
DCE_DEFAULTS = {"TR": 5.0, "TE": 2.0, "FA": 15.0, "frames": 10, "interval_s": 30.0, "baseline": 1,
                "early_minutes": 1.0}


def frame_times(frames: int, interval_s: float, baseline: int = 1) -> tuple[np.ndarray, float]:
    """Acquisition times (minutes) of the ``baseline + frames`` volumes, the first at 0, and the
    bolus arrival ``t_0`` (half an interval before the first post-contrast frame)."""
    if frames < 1 or baseline < 1 or not interval_s > 0:
        raise ValueError(f"need frames >= 1, baseline >= 1 and interval_s > 0, got {frames}, {baseline}, {interval_s}")
    dt = float(interval_s) / 60.0
    t = np.arange(baseline + frames, dtype=np.float64) * dt
    return t, (baseline - 0.5) * dt


def population_aif(t, t0: float = 0.0, aif: dict = POPULATION_AIF) -> np.ndarray:
    """Plasma concentration (mM) at times ``t`` (minutes) for a bolus arriving at ``t0``."""
    t = np.asarray(t, dtype=np.float64)
    s = np.clip(t - t0, 0.0, None)
    c = aif["D"] * sum(a * np.exp(-m * s) for a, m in zip(aif["a"], aif["m"]))
    return np.where(t >= t0, c, 0.0)


def tofts_concentration(t, ktrans: float, ve: float, vp: float, t0: float = 0.0, aif=population_aif,
                        step: float = 1.0 / 600) -> np.ndarray:
    """Tissue concentration (mM) of the extended Tofts model at times ``t`` (minutes), by numerical
    convolution of ``aif(times, t0)`` (any input function) on a grid of ``step`` minutes, exact
    for the exponential kernel within each step (the input taken linear in between)."""
    t = np.asarray(t, dtype=np.float64)
    if ktrans < 0 or vp < 0 or (ktrans > 0 and not ve > 0):
        raise ValueError(f"need Ktrans >= 0, vp >= 0 and ve > 0 where Ktrans > 0, got {ktrans}, {ve}, {vp}")
    if ktrans == 0 or not t.size:
        return vp * aif(t, t0)
    kep = ktrans / ve
    end = float(t.max())
    # the grid starts at the arrival, where the input jumps; before it the tissue holds nothing
    n = max(int(math.ceil(max(end - t0, 0.0) / step)), 1)
    grid = t0 + np.arange(n + 1) * ((max(end, t0) - t0) / n)
    h = grid[1] - grid[0] if n else step
    cp = aif(grid, t0)
    # exact integral of exp(-kep (t_{i+1} - s)) * linear cp over [t_i, t_{i+1}]
    e = math.exp(-kep * h)
    w0 = (1 - (1 + kep * h) * e) / (kep * kep * h) if h > 0 else 0.0  # weight of cp(t_i)
    w1 = (kep * h - 1 + e) / (kep * kep * h) if h > 0 else 0.0  # weight of cp(t_{i+1})
    conv = np.zeros_like(grid)
    for i in range(n):
        conv[i + 1] = conv[i] * e + w0 * cp[i] + w1 * cp[i + 1]
    ees = np.interp(t, grid, conv, left=0.0)
    return vp * aif(t, t0) + ktrans * np.where(t >= t0, ees, 0.0)


def tofts_closed_form(t, ktrans: float, ve: float, vp: float, t0: float = 0.0, aif: dict = POPULATION_AIF) -> np.ndarray:
    """The extended Tofts concentration for the bi-exponential input, in closed form:
    ``v_p C_p(t) + D K^trans sum_i a_i (exp(-m_i s) - exp(-k_ep s)) / (k_ep - m_i)``, ``s = t - t0``."""
    t = np.asarray(t, dtype=np.float64)
    s = np.clip(t - t0, 0.0, None)
    out = vp * population_aif(t, t0, aif)
    if ktrans > 0:
        kep = ktrans / ve
        for a, m in zip(aif["a"], aif["m"]):
            if abs(kep - m) < 1e-12:
                out = out + aif["D"] * ktrans * a * s * np.exp(-m * s)
            else:
                out = out + aif["D"] * ktrans * a * (np.exp(-m * s) - np.exp(-kep * s)) / (kep - m)
    return np.where(t >= t0, out, 0.0)


def spgr_signal(pd, t1, t2, tr: float, te: float, fa_deg: float):
    """Spoiled gradient echo: ``PD sin(a) (1 - E1) / (1 - cos(a) E1) exp(-TE / T2)``, ``E1 = exp(-TR / T1)``."""
    a = math.radians(fa_deg)
    e1 = np.exp(-tr / np.asarray(t1, dtype=np.float64))
    return pd * math.sin(a) * (1 - e1) / (1 - math.cos(a) * e1) * np.exp(-te / np.asarray(t2, dtype=np.float64))


def tissue_curves(tissue_parameters: dict, field_strength_relaxivity: float, dce: dict | None = None,
                  dce_parameters: dict | None = None) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per compartment: the concentration (mM) and the SPGR signal at every frame time.

    Args:
        tissue_parameters: compartment -> {"T1", "T2", "PD"} (ms; the subject's values).
        field_strength_relaxivity: r_1 in /mM/s.
        dce: acquisition overrides of :data:`DCE_DEFAULTS`.
        dce_parameters: compartment -> {"Ktrans", "ve", "vp"} (default :data:`DCE_PARAMETERS`).

    Returns:
        ``(times_min, concentration, signal)``: times ``(F,)``; compartment -> ``(F,)`` arrays.
    """
    cfg = {**DCE_DEFAULTS, **(dce or {})}
    pk = dce_parameters or DCE_PARAMETERS
    t, t0 = frame_times(int(cfg["frames"]), float(cfg["interval_s"]), int(cfg["baseline"]))
    r1 = float(field_strength_relaxivity) / 1000.0  # /mM/ms
    conc, sig = {}, {}
    for k, p in tissue_parameters.items():
        q = pk[k]
        c = tofts_concentration(t, q["Ktrans"], q["ve"], q["vp"], t0)
        t1 = 1.0 / (1.0 / p["T1"] + r1 * c)
        conc[k] = c
        sig[k] = spgr_signal(p["PD"], t1, p["T2"], cfg["TR"], cfg["TE"], cfg["FA"])
    return t, conc, sig


def dce_maps(series: np.ndarray, times_min: np.ndarray, baseline: int = 1, early_minutes: float = 1.0):
    """Wash-in and wash-out maps of a series ``(X, Y, Z, F)`` at ``times_min`` (minutes):
    ``wash-in = (S_early - S_0) / (t_early - t_0)``, ``wash-out = (S_last - S_early) / (t_last - t_early)``
    (signal per minute), ``S_0`` the mean of the ``baseline`` pre-contrast frames and ``early``
    the first post-contrast frame at or after ``t_0 + early_minutes`` (the last one if none)."""
    series = np.asarray(series, dtype=np.float32)
    times_min = np.asarray(times_min, dtype=np.float64)
    if series.ndim != 4 or series.shape[-1] != times_min.size or times_min.size < baseline + 2:
        raise ValueError(f"need a series (X, Y, Z, F) with F = {times_min.size} >= baseline + 2 frames, got {series.shape}")
    s0 = series[..., :baseline].mean(-1)
    post = np.arange(baseline, times_min.size)
    later = post[times_min[post] >= times_min[0] + early_minutes]
    early = int(later[0]) if later.size else int(post[-1])
    if early == times_min.size - 1:
        early = times_min.size - 2
    t_ref = times_min[:baseline].mean()
    washin = (series[..., early] - s0) / np.float32(times_min[early] - t_ref)
    washout = (series[..., -1] - series[..., early]) / np.float32(times_min[-1] - times_min[early])
    return washin.astype(np.float32), washout.astype(np.float32), early
