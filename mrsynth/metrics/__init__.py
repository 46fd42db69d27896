"""Metrics of the papers: PSNR (whole crop and foreground-masked), SSIM, LPIPS (when its
ImageNet weights exist), the phantom's noise-floor limit, the sequence-contribution ranking
and imaging-differentiation maps.

All image metrics take numpy arrays or torch tensors on the ``[-1, 1]`` scale (``data_range``
2), as the papers define them.
"""

from .contribution import contribution_matrix, contribution_ranking, pair_means, write_contribution
from .image import noise_floor_psnr, normalize_like_paper, per_slice, psnr, ssim, ssim_map, to_numpy
from .lpips import LPIPS, check_lpips_weights, lpips_backbone_path, lpips_or_none
from .maps import differentiation_map, save_map_preview

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
]
