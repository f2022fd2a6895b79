"""Training augmentation: the published spatial and intensity transforms, via albumentations.

Rautaray et al. (2020) list flips, shift-scale-rotate, elastic, grid and
optical distortion, brightness, contrast and gamma. They are taken from
`albumentations <https://albumentations.ai>`_ (OpenCV kernels, a few
milliseconds per 128 x 128 example on one CPU core, so augmentation runs in
the data-loading workers and never needs the GPU) rather than written here.

An example is augmented in two steps (:class:`Augmenter`):

1. **spatial**, on the ``uint8`` image and its *label image* together: the
   eight flips/90-degree rotations (always), then with probability
   ``affine`` a shift-scale-rotate, then with probability ``distort`` one of
   elastic, grid or optical distortion. The image is interpolated bilinearly,
   the labels by nearest neighbour (no new label values appear), borders are
   filled by reflection for both. The training targets (body, touching
   borders) are computed *afterwards* from the transformed labels, so a
   border is always a border between the nuclei the network sees.
2. **intensity**, on the percentile-normalised float image (after
   :func:`nucseg.imageio.normalize_image`; applied before it, brightness and
   contrast changes would be normalised away): brightness/contrast and gamma,
   each with probability ``intensity``. albumentations clips float images to
   [0, 1], so the normalised range [-0.5, 1.5] is mapped onto [0, 1] and back
   around these transforms: nothing is clipped.

Randomness comes only from the generator passed in, so one generator per
(seed, epoch, example) gives the same augmentation whatever the number of
data-loading workers, and a resumed training run sees what an uninterrupted
one would have seen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np

#: Border filling of the spatial transforms (image and labels alike): mirror without repeating the edge.
BORDER = cv2.BORDER_REFLECT_101
#: The normalised image's range (:func:`nucseg.imageio.normalize_image` clips to it).
NORM_LOW, NORM_HIGH = -0.5, 1.5


@dataclass(frozen=True)
class AugmentSettings:
    """Probabilities of the augmentation groups (flips and 90-degree rotations are always on).

    Attributes
    ----------
    affine : float
        Shift (up to 6.25 % of the side), scale (0.8-1.25) and rotation (up to 45 degrees).
    distort : float
        One of elastic (alpha 120, sigma 6 pixels), grid (5 x 5 cells, up to
        30 %) or optical (up to 20 %) distortion.
    intensity : float
        Brightness (+-0.1 of the [0, 1]-mapped range, i.e. +-0.2 in normalised
        units) and contrast (x0.8-1.2) change, and, drawn separately, gamma
        (0.8-1.2).
    colour : float
        A hue (+-15 of 180), saturation (+-25 of 255) and value (+-10 of 255) shift, for
        stained and bright-field images whose colour differs between sources. 0 (the
        default) leaves the random draws of the other transforms as they were.
    rescale : float
        A zoom by a factor drawn log-uniformly in [1/2, 2] (image and labels; nuclei of other
        sizes than the training images hold), after the other spatial transforms.
    stain : float
        Haematoxylin-eosin stain jitter of a colour image: in HED space (Ruifrok and Johnston's
        colour deconvolution, ``skimage.color.rgb2hed``) each stain's density scaled by a factor
        in [0.8, 1.2] and shifted by up to +-0.03 (Tellez et al. 2019's "HED" augmentation);
        grey images are left alone.
    grey : float
        A colour image turned grey with random channel weights (drawn from a flat Dirichlet),
        the grey repeated on the three channels.
    noise : float
        Gaussian noise of a standard deviation drawn in [0, 0.05] of the [0, 1]-mapped range
        (up to 0.1 in normalised units), on the normalised image.
    blur : float
        Gaussian blur of a sigma drawn in [0.5, 1.5] px, on the normalised image.
    sparse : float
        A sparse scene (:func:`dim_nuclei`): of a crop with two or more nuclei, all but 0-3 of
        them (drawn at random) have their signal against the background cut to a factor drawn
        in [0.15, 0.6], before normalisation with the whole source image's percentiles, which
        the bright nuclei kept still set: dim nuclei beside a few bright ones.

    The last six are 0 by default, which leaves the draws of the others as they were.
    """

    affine: float = 0.5
    distort: float = 0.25
    intensity: float = 0.5
    colour: float = 0.0
    rescale: float = 0.0
    stain: float = 0.0
    grey: float = 0.0
    noise: float = 0.0
    blur: float = 0.0
    sparse: float = 0.0

    def __post_init__(self) -> None:
        for name in ("affine", "distort", "intensity", "colour", "rescale", "stain", "grey", "noise", "blur", "sparse"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"augmentation probability {name} must be in [0, 1], got {value}")


def spatial_transforms(settings: AugmentSettings) -> list[A.BasicTransform]:
    """The spatial transforms, in the order they are applied (image and labels alike)."""
    return [
        A.SquareSymmetry(p=1.0),
        A.Affine(scale=(0.8, 1.25), translate_percent=(-0.0625, 0.0625), rotate=(-45, 45), border_mode=BORDER, p=settings.affine),
        A.OneOf(
            [
                A.ElasticTransform(alpha=120, sigma=6, border_mode=BORDER, p=1.0),
                A.GridDistortion(num_steps=5, distort_limit=0.3, border_mode=BORDER, p=1.0),
                A.OpticalDistortion(distort_limit=0.2, border_mode=BORDER, p=1.0),
            ],
            p=settings.distort,
        ),
    ] + ([A.Affine(scale=(0.5, 2.0), keep_ratio=True, balanced_scale=True, border_mode=BORDER, p=settings.rescale)] if settings.rescale > 0 else [])


def intensity_transforms(settings: AugmentSettings) -> list[A.BasicTransform]:
    """The intensity transforms (image only), for a float image in [0, 1]."""
    transforms = [
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.2, p=settings.intensity),
        A.RandomGamma(gamma_limit=(80, 120), p=settings.intensity),
    ]
    if settings.colour > 0:  # last, and only when on: the draws of the others stay the same
        transforms.append(A.HueSaturationValue(hue_shift_limit=15, sat_shift_limit=25, val_shift_limit=10, p=settings.colour))
    if settings.noise > 0:
        transforms.append(A.GaussNoise(std_range=(0.0, 0.05), per_channel=False, p=settings.noise))
    if settings.blur > 0:
        transforms.append(A.GaussianBlur(blur_limit=0, sigma_limit=(0.5, 1.5), p=settings.blur))
    return transforms


def is_colour(image: np.ndarray) -> bool:
    """Whether an ``(H, W, 3)`` image has colour (its channels differ anywhere)."""
    return bool(image.ndim == 3 and image.shape[2] >= 3 and not ((image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()))


def hed_jitter(image: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Haematoxylin, eosin and DAB densities of an RGB ``uint8`` image scaled by ``scale`` (3,)
    and shifted by ``shift`` (3,) (``skimage.color.rgb2hed`` space), back to ``uint8`` RGB."""
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(image[..., :3]) * np.asarray(scale, float) + np.asarray(shift, float)
    return np.clip(np.round(hed2rgb(hed) * 255), 0, 255).astype(np.uint8)


def random_grey(image: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """An RGB ``uint8`` image as grey ``sum(weights * channels)`` (weights summing to 1), on three channels."""
    grey = np.clip(np.round(image[..., :3].astype(np.float32) @ np.asarray(weights, np.float32)), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def dim_nuclei(image: np.ndarray, labels: np.ndarray, dim: np.ndarray, factor: float) -> np.ndarray:
    """``image`` with the nuclei ``dim`` (label values) moved toward the background: ``b + (x -
    b) * factor`` per channel, ``b`` the median of the pixels outside every nucleus (bright
    nuclei on dark and dark on light alike).

    Parameters
    ----------
    image : (H, W, C) ndarray of uint8
    labels : (H, W) ndarray of int
    dim : (N,) ndarray of int
        The label values to dim.
    factor : float
        In [0, 1]: 0 makes them background, 1 leaves them.

    Returns
    -------
    (H, W, C) ndarray of uint8
        A new image; ``image`` itself as it was when no pixel is background or none is dimmed.
    """
    background = labels == 0
    where = np.isin(labels, dim)
    if not background.any() or not where.any():
        return image
    b = np.median(image[background], axis=0).astype(np.float32)
    out = image.astype(np.float32)
    out[where] = b + (out[where] - b) * factor
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _seed_compose(compose: A.Compose, rng: np.random.Generator) -> None:
    # one shared stream for all transforms of the pipeline (set_random_seed would give every
    # transform the same seed, hence the same draws: correlated decisions)
    compose.set_random_state(rng, random.Random(int(rng.integers(2**63))))


class Augmenter:
    """Applies :func:`spatial_transforms` and :func:`intensity_transforms` to training examples.

    Parameters
    ----------
    settings : AugmentSettings
    """

    def __init__(self, settings: AugmentSettings | None = None) -> None:
        self.settings = settings or AugmentSettings()
        self._spatial = A.Compose(spatial_transforms(self.settings), mask_interpolation=cv2.INTER_NEAREST)
        self._intensity = A.Compose(intensity_transforms(self.settings))

    def spatial(self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Transform an image and its label image identically.

        Parameters
        ----------
        image : (H, W, C) ndarray of uint8
        labels : (H, W) ndarray of integers
            Label image; its values are kept (nearest-neighbour interpolation).
        rng : numpy.random.Generator
            The only source of randomness.

        Returns
        -------
        image : (H, W, C) ndarray of uint8
        labels : (H, W) ndarray, dtype of ``labels``
        """
        if image.ndim != 3 or labels.shape != image.shape[:2]:
            raise ValueError(f"expected an (H, W, C) image and an (H, W) label image, got {image.shape} and {labels.shape}")
        # OpenCV cannot remap uint32: transform the labels' ranks (uint16), then map back
        values, ranks = np.unique(labels, return_inverse=True)
        if len(values) > np.iinfo(np.uint16).max:
            raise ValueError(f"label image with {len(values)} distinct labels: at most 65,535 per training example")
        _seed_compose(self._spatial, rng)
        out = self._spatial(image=np.ascontiguousarray(image), mask=ranks.reshape(labels.shape).astype(np.uint16))
        return out["image"], values[out["mask"]]

    def stain(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Stain jitter and random grey conversion of a colour ``(H, W, 3) uint8`` image (settings
        ``stain``, ``grey``); a grey image, or settings at 0, come back as they are and draw nothing."""
        if (self.settings.stain <= 0 and self.settings.grey <= 0) or not is_colour(image):
            return image
        if self.settings.stain > 0 and rng.random() < self.settings.stain:
            image = hed_jitter(image, rng.uniform(0.8, 1.2, 3), rng.uniform(-0.03, 0.03, 3))
        if self.settings.grey > 0 and rng.random() < self.settings.grey:
            image = random_grey(image, rng.dirichlet(np.ones(3)))
        return image

    def sparse(self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A sparse scene of a ``(H, W, C) uint8`` image and its labels (setting ``sparse``,
        :func:`dim_nuclei`); under two nuclei, or the setting at 0, the image comes back as it
        is (at 0 nothing is drawn)."""
        if self.settings.sparse <= 0 or rng.random() >= self.settings.sparse:
            return image
        ids = np.unique(labels)
        ids = ids[ids != 0]
        if ids.size < 2:
            return image
        keep = min(int(rng.integers(0, 4)), ids.size - 1)
        dim = rng.permutation(ids)[keep:]
        return dim_nuclei(image, labels, dim, float(rng.uniform(0.15, 0.6)))

    def intensity(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Brightness, contrast and gamma of a normalised ``(H, W, C) float32`` image (values in [-0.5, 1.5])."""
        span = NORM_HIGH - NORM_LOW
        unit = np.clip((np.asarray(image, np.float32) - NORM_LOW) / span, 0.0, 1.0)
        _seed_compose(self._intensity, rng)
        out = self._intensity(image=unit)["image"]
        return (out * span + NORM_LOW).astype(np.float32)
