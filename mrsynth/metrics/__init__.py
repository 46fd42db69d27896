"""Metrics of the papers: PSNR (whole crop and foreground-masked), SSIM, LPIPS (when its
ImageNet weights exist), the phantom's noise-floor limit (noiseless and Rician-mean),
per-tissue contrast against the known answer with a denoise-and-remap baseline and a tissue oracle, the sequence-contribution ranking
and imaging-differentiation maps.

All image metrics take numpy arrays or torch tensors on the ``[-1, 1]`` scale (``data_range``
2), as the papers define them.
"""

from .contribution import contribution_matrix, contribution_ranking, pair_means, write_contribution
from .image import noise_floor_psnr, normalize_like_paper, per_slice, psnr, ssim, ssim_map, to_numpy
from .lpips import LPIPS, check_lpips_weights, lpips_backbone_path, lpips_or_none
from . import contrast
from .contrast import *  # noqa: F401,F403  (its __all__)
from .maps import differentiation_map, save_map_preview, save_pair_grid

__all__ = [
    "psnr",
    "ssim",
    "ssim_map",
    "per_slice",
    "noise_floor_psnr",
    "normalize_like_paper",
    "to_numpy",
    "LPIPS",
    "lpips_or_none",
    "lpips_backbone_path",
    "check_lpips_weights",
    "pair_means",
    "contribution_matrix",
    "contribution_ranking",
    "write_contribution",
    "differentiation_map",
    "save_map_preview",
    "save_pair_grid",
] + contrast.__all__
