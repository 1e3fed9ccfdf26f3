"""PAMR, pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020), as SCLIP and NACLIP apply it
to the score maps: 10 iterations over the 8 neighbours at dilations 8 and 16.

For each pixel i and neighbour j (edges replicated), the affinity is

    a_ij = softmax_j( mean_c( -|I_c(i) - I_c(j)| / (0.1 * sigma_c(i) + 1e-8) ) )

with sigma_c(i) the standard deviation (unbiased) of channel c over the 3x3 windows of i at all
dilations (centre included); each iteration replaces every map value by sum_j a_ij m(j).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

OFFSETS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))


def _neighbours(x: torch.Tensor, dilations, centre: bool = False) -> list[torch.Tensor]:
    """Shifted copies of x (B, C, H, W): its neighbour at each offset and dilation (edges replicated)."""
    h, w = x.shape[2:]
    out = []
    for d in dilations:
        p = F.pad(x, [d] * 4, mode="replicate")
        offsets = OFFSETS + (((0, 0),) if centre else ())
        out += [p[:, :, d + dy * d:d + dy * d + h, d + dx * d:d + dx * d + w] for dy, dx in offsets]
    return out


def pamr_affinity(image: torch.Tensor, dilations=(8, 16)) -> torch.Tensor:
    """Image (B, 3, H, W) -> affinities (B, P, H, W) over the P = 8 * len(dilations) neighbours."""
    image = image.float()
    window = torch.stack(_neighbours(image, dilations, centre=True), dim=2)  # (B, 3, 9D, H, W)
    sigma = window.std(dim=2)
    diff = torch.stack([(image - n).abs() for n in _neighbours(image, dilations)], dim=2)
    return (-diff / (1e-8 + 0.1 * sigma[:, :, None])).mean(dim=1).softmax(dim=1)


@torch.no_grad()
def pamr(image: torch.Tensor, maps: torch.Tensor, steps: int = 10, dilations=(8, 16)) -> torch.Tensor:
    """Refine maps (B, K, H, W) along the edges of image (B, 3, H, W) (same H, W); see the module doc.

    Memory: the affinities (B, 16, H, W) and two map-sized buffers; the K maps are never copied 16 times.
    """
    if image.shape[2:] != maps.shape[2:]:
        raise ValueError(f"PAMR needs the image and the maps at one size, got {tuple(image.shape[2:])} "
                         f"and {tuple(maps.shape[2:])}; upsample the maps first")
    dilations = tuple(int(d) for d in dilations)
    aff = pamr_affinity(image, dilations).to(maps.dtype)
    for _ in range(steps):
        out = torch.zeros_like(maps)
        for j, n in enumerate(_neighbours(maps, dilations)):
            out.addcmul_(n, aff[:, j:j + 1])
        maps = out
    return maps
