import copy
import random

import albumentations as A
import cv2
import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.draw import disk

from nucseg.augment import Augmenter, AugmentSettings, intensity_transforms, spatial_transforms

SIZE = 96
#: grey value of label k in the test image: well apart, so bilinear mixing at edges is told from the inside
GREY = {0: 0, 1: 70, 2: 120, 3: 170, 4: 220}
ALL = AugmentSettings(affine=1.0, distort=1.0, intensity=1.0)


def disc_sample(values=(1, 2, 3, 4)):
    """Four discs with labels ``values`` and an image whose grey level encodes each disc's label."""
    labels = np.zeros((SIZE, SIZE), np.uint32)
    for value, centre in zip(values, [(24, 24), (24, 70), (70, 30), (66, 68)]):
        labels[disk(centre, 14, shape=labels.shape)] = value
    grey = np.zeros((SIZE, SIZE), np.uint8)
    for k, value in enumerate(values, start=1):
        grey[labels == value] = GREY[k]
    return np.repeat(grey[..., None], 3, axis=2), labels


def single_transforms():
    """Every spatial transform on its own, forced to apply (OneOf's members separately)."""
    out = []
    for t in spatial_transforms(ALL):
        members = t.transforms if isinstance(t, A.OneOf) else [t]
        for m in members:
            m = copy.deepcopy(m)
            m.p = 1.0
            out.append(pytest.param(m, id=type(m).__name__))
    return out


def assert_aligned(image, labels, values=(1, 2, 3, 4), edge=1):
    """Away from edges (where bilinear and nearest-neighbour interpolation legitimately differ by
    ``edge`` pixels), every pixel's grey level is that of its label, for every label."""
    lut = dict(zip((0,) + tuple(values), GREY.values()))
    size = 2 * edge + 1
    interior = ndi.minimum_filter(labels, size) == ndi.maximum_filter(labels, size)
    expected = np.vectorize(lut.get, otypes=[int])(labels)
    wrong = interior & (np.abs(image[..., 0].astype(int) - expected) > 20)
    assert wrong.sum() <= 0.005 * interior.sum(), f"{wrong.sum()} of {interior.sum()} pixels away from edges show another label's grey level"
    for value in lut:
        assert (interior & (labels == value)).any(), f"label {value} disappeared"


@pytest.mark.parametrize("transform", single_transforms())
def test_every_spatial_transform_moves_image_and_labels_identically(transform):
    """With the image interpolated by nearest neighbour too, image and labels must agree pixel for pixel."""
    image, labels = disc_sample()
    lut = np.array(list(GREY.values()), np.uint8)
    exact = copy.deepcopy(transform)
    if hasattr(exact, "interpolation"):
        exact.interpolation = cv2.INTER_NEAREST
    moved = 0
    for seed in range(4):
        for t, check in ((exact, "exact"), (transform, "bilinear")):
            pipeline = A.Compose([t], mask_interpolation=cv2.INTER_NEAREST)
            pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
            out = pipeline(image=image, mask=labels.astype(np.uint16))
            assert set(np.unique(out["mask"])) <= set(np.unique(labels)), "nearest-neighbour labels: no new values"
            if check == "exact":
                np.testing.assert_array_equal(out["image"][..., 0], lut[out["mask"]])
            else:
                assert_aligned(out["image"], out["mask"])
        moved += not np.array_equal(out["mask"], labels)
    assert moved, "the transform never changed the example: the test would prove nothing"


def test_alignment_check_sees_a_one_pixel_shift():
    image, labels = disc_sample()
    assert_aligned(image, labels)
    with pytest.raises(AssertionError):
        assert_aligned(image, np.roll(labels, 1, axis=1), edge=0)
    with pytest.raises(AssertionError):
        assert_aligned(image, np.roll(labels, 2, axis=0))


def test_augmenter_keeps_labels_aligned_with_everything_on():
    image, labels = disc_sample()
    augmenter = Augmenter(ALL)
    for seed in range(12):
        img, lab = augmenter.spatial(image, labels, np.random.default_rng(seed))
        assert img.dtype == np.uint8 and img.shape == image.shape
        assert lab.dtype == labels.dtype and lab.shape == labels.shape
        assert_aligned(img, lab)


def test_large_label_values_survive():
    """Regression: OpenCV cannot remap uint32, and casting labels above 65,535 to uint16 would wrap them."""
    image, labels = disc_sample(values=(70_000, 70_001, 123_456, 4_000_000_000))
    img, lab = Augmenter(ALL).spatial(image, labels, np.random.default_rng(3))
    assert lab.dtype == np.uint32
    assert set(np.unique(lab)) <= {0, 70_000, 70_001, 123_456, 4_000_000_000}
    assert_aligned(img, lab, values=(70_000, 70_001, 123_456, 4_000_000_000))


def test_same_generator_same_result_and_inputs_untouched():
    image, labels = disc_sample()
    before = image.copy(), labels.copy()
    augmenter = Augmenter(ALL)
    a = augmenter.spatial(image, labels, np.random.default_rng((0, 1, 2)))
    b = Augmenter(ALL).spatial(image, labels, np.random.default_rng((0, 1, 2)))
    c = augmenter.spatial(image, labels, np.random.default_rng((0, 2, 2)))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    np.testing.assert_array_equal(image, before[0])
    np.testing.assert_array_equal(labels, before[1])


def test_intensity_is_monotone_and_keeps_the_normalised_range():
    x = np.linspace(-0.5, 1.5, 3 * 64 * 64, dtype=np.float32).reshape(64, 64, 3)
    augmenter = Augmenter(ALL)
    changed = 0
    for seed in range(8):
        y = augmenter.intensity(x, np.random.default_rng(seed))
        assert y.dtype == np.float32 and y.shape == x.shape
        assert y.min() >= -0.5 - 1e-6 and y.max() <= 1.5 + 1e-6
        assert np.all(np.diff(y.ravel()) >= -1e-6), "brightness, contrast and gamma keep the order of grey levels"
        changed += not np.allclose(y, x, atol=1e-3)
    assert changed >= 4


def test_probability_zero_changes_nothing_but_the_symmetry():
    image, labels = disc_sample()
    augmenter = Augmenter(AugmentSettings(affine=0, distort=0, intensity=0))
    x = np.random.default_rng(0).uniform(-0.5, 1.5, (32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(augmenter.intensity(x, np.random.default_rng(0)), x, atol=1e-6)
    for seed in range(8):
        img, lab = augmenter.spatial(image, labels, np.random.default_rng(seed))
        # only the 8 flips/rotations: exact, so the image is one of them pixel for pixel
        assert any(np.array_equal(img[..., 0], np.rot90(f, k)) for k in range(4) for f in (image[..., 0], image[:, ::-1, 0]))
        assert_aligned(img, lab)


def test_transform_lists_hold_the_published_augmentations():
    names = {type(t).__name__ for t in spatial_transforms(ALL) + intensity_transforms(ALL)}
    names |= {type(m).__name__ for t in spatial_transforms(ALL) if isinstance(t, A.OneOf) for m in t.transforms}
    assert {"SquareSymmetry", "Affine", "ElasticTransform", "GridDistortion", "OpticalDistortion", "RandomBrightnessContrast", "RandomGamma"} <= names


def test_bad_settings_and_shapes_are_named():
    with pytest.raises(ValueError, match="distort must be in"):
        AugmentSettings(distort=1.5)
    with pytest.raises(ValueError, match=r"\(H, W\) label image"):
        Augmenter().spatial(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9), np.uint32), np.random.default_rng(0))
