"""Predict stage: probability maps of full-size images from a trained model.

Each image is normalised over its whole extent, symmetric-padded to a multiple
of 32 (tile by tile for images larger than a tile, see :mod:`nucseg.tiling`),
passed through the network (optionally with test-time augmentation: the eight
flips and 90-degree rotations, averaged), and cropped back to its size.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import zarr

from nucseg.files import atomic_dir
from nucseg.imageio import normalize_image
from nucseg.tiling import process_tiled
from nucseg.model import choose_device, load_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictSettings:
    """Inference settings.

    Attributes
    ----------
    tta : bool
        Average over the 8 flips/rotations (8x slower, smoother maps).
    tile : int
        Core tile side for large images; a multiple of 32.
    margin : int
        Context around each tile, in pixels.
    device : {"auto", "cpu", "cuda"}
    """

    tta: bool = False
    tile: int = 1024
    margin: int = 64
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.tile < 32 or self.tile % 32:
            raise ValueError(f"predict tile must be a positive multiple of 32, got {self.tile}")
        if self.margin < 0:
            raise ValueError(f"predict margin must be >= 0, got {self.margin}")


def _dihedral(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    x = torch.rot90(x, k, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if flip else x


def _undo_dihedral(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    if flip:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, -k, dims=(-2, -1))


@torch.no_grad()
def predict_image(model: torch.nn.Module, image: np.ndarray, settings: PredictSettings, normalize: dict | None = None, device: torch.device | None = None) -> np.ndarray:
    """Probability maps of one image.

    Parameters
    ----------
    model : ResUNet in eval mode
    image : (H, W, 3) ndarray of uint8
    settings : PredictSettings
    normalize : dict, optional
        ``low``/``high`` percentiles of :func:`nucseg.imageio.normalize_image` (the model's config).

    Returns
    -------
    (K, H, W) ndarray of float32 in [0, 1]
        One map per model head, in the order of ``model.config.heads``.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    device = device or next(model.parameters()).device
    x_full = normalize_image(image, **(normalize or {}))
    transforms = [(k, f) for k in range(4) for f in (False, True)] if settings.tta else [(0, False)]
    amp = device.type == "cuda"

    def run(block: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(block.transpose(2, 0, 1)))[None].to(device)
        acc = None
        for k, flip in transforms:
            with torch.autocast(device.type, enabled=amp):
                p = torch.sigmoid(model(_dihedral(x, k, flip)).float())
            p = _undo_dihedral(p, k, flip)
            acc = p if acc is None else acc + p
        return (acc / len(transforms))[0].cpu().numpy()

    return process_tiled(run, x_full, len(model.config.heads), settings.tile, settings.margin)


def predict_dataset(model_dir: str | os.PathLike, images_zarr: str | os.PathLike, index_csv: str | os.PathLike, out_zarr: str | os.PathLike, settings: PredictSettings, threads: int | None = None) -> None:
    """Predict stage: probability maps for every image of a full-size store.

    Writes ``out_zarr`` with one array per image ``<id> (K, H, W) float32``
    (chunked by 1024 x 1024) and attributes ``heads`` (the channel names).
    """
    if threads:
        torch.set_num_threads(threads)
    device = choose_device(settings.device)
    model, config = load_model(model_dir, device)
    ids = pd.read_csv(index_csv, dtype={"image_id": str})["image_id"].tolist()
    images = zarr.open_group(images_zarr, mode="r")["images"]
    with atomic_dir(out_zarr, overwrite=True) as tmp:
        root = zarr.open_group(tmp, mode="w")
        root.attrs.update(dict(heads=list(model.config.heads), model=str(model_dir), tta=settings.tta))
        for image_id in ids:
            prob = predict_image(model, images[image_id][:], settings, config.get("normalize"), device)
            k, h, w = prob.shape
            root.create_array(image_id, data=prob, chunks=(k, min(h, 1024), min(w, 1024)))
            log.info("%s: %dx%d predicted", image_id, h, w)
