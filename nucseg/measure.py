"""Per-object measurements of a label image."""

from __future__ import annotations

import numpy as np
import pandas as pd
from skimage.measure import regionprops_table

COLUMNS = ["label", "area", "centroid_y", "centroid_x", "bbox_min_y", "bbox_min_x", "bbox_max_y", "bbox_max_x", "equivalent_diameter", "eccentricity", "solidity", "mean_intensity"]


def measure_objects(labels: np.ndarray, image: np.ndarray | None = None) -> pd.DataFrame:
    """One row per nucleus of a label image.

    Parameters
    ----------
    labels : (H, W) ndarray of integers
        0 is background.
    image : (H, W) or (H, W, 3) ndarray, optional
        Intensities for ``mean_intensity`` (mean over channels); NaN without it.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`COLUMNS` (pixels; centroid and bbox in row/column
        coordinates, bbox max exclusive). No rows for an image without nuclei.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"expected a 2-D integer label image, got {labels.shape} {labels.dtype}")
    grey = None
    if image is not None:
        image = np.asarray(image)
        grey = image.mean(axis=2) if image.ndim == 3 else image
        if grey.shape != labels.shape:
            raise ValueError(f"image {image.shape} and labels {labels.shape} differ in size")
    props = ["label", "area", "centroid", "bbox", "equivalent_diameter_area", "eccentricity", "solidity"]
    if grey is not None:
        props.append("intensity_mean")
    table = pd.DataFrame(regionprops_table(labels, intensity_image=grey, properties=props))
    table = table.rename(columns={"centroid-0": "centroid_y", "centroid-1": "centroid_x", "bbox-0": "bbox_min_y", "bbox-1": "bbox_min_x", "bbox-2": "bbox_max_y", "bbox-3": "bbox_max_x", "equivalent_diameter_area": "equivalent_diameter", "intensity_mean": "mean_intensity"})
    if "mean_intensity" not in table:
        table["mean_intensity"] = np.nan
    return table.reindex(columns=COLUMNS)
