import copy
import random

import albumentations as A
import cv2
import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.draw import disk

from nucseg.augment import NORM_HIGH, NORM_LOW, Augmenter, AugmentSettings, dim_nuclei, intensity_transforms, spatial_transforms

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


# ---------------------------------------------------------------------------
# Invariance to size, stain and optics: rescale, stain, grey, noise, blur
# ---------------------------------------------------------------------------


def _example(seed: int = 0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    labels = np.zeros((64, 64), np.uint32)
    labels[10:30, 10:30], labels[40:60, 35:55] = 3, 70000
    return image, labels


def test_new_augmentations_off_leave_the_draws_as_they_were():
    """With rescale, stain, grey, noise and blur at 0 (the defaults), every example is
    augmented exactly as before they existed (the same transforms and random draws)."""
    image, labels = _example()
    before, after = Augmenter(AugmentSettings(colour=0.3)), Augmenter(AugmentSettings(colour=0.3, rescale=0, stain=0, grey=0, noise=0, blur=0))
    for seed in range(4):
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        ia, la = before.spatial(image, labels, a)
        ib, lb = after.spatial(image, labels, b)
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(la, lb)
        np.testing.assert_array_equal(after.stain(ib, b), ib)
        x = ia.astype(np.float32) / 255
        np.testing.assert_array_equal(before.intensity(x, a), after.intensity(x, b))


def test_new_augmentations_keep_shapes_types_ranges_and_labels():
    image, labels = _example()
    augmenter = Augmenter(AugmentSettings(rescale=1, stain=1, grey=0.5, noise=1, blur=1))
    for seed in range(6):
        rng = np.random.default_rng(seed)
        out, lab = augmenter.spatial(image, labels, rng)
        assert out.shape == image.shape and out.dtype == np.uint8 and lab.shape == labels.shape and lab.dtype == labels.dtype
        assert set(np.unique(lab)) <= {0, 3, 70000}  # nearest neighbour: no new label values
        stained = augmenter.stain(out, rng)
        assert stained.shape == out.shape and stained.dtype == np.uint8
        x = augmenter.intensity(stained.astype(np.float32) / 255 * 2 - 0.5, rng)
        assert x.shape == out.shape and x.dtype == np.float32 and NORM_LOW <= x.min() and x.max() <= NORM_HIGH


def test_stain_and_grey_touch_colour_images_only_and_grey_is_grey():
    from nucseg.augment import hed_jitter, is_colour, random_grey

    image, _ = _example()
    grey = np.repeat(image[..., :1], 3, axis=2)
    augmenter = Augmenter(AugmentSettings(stain=1, grey=1))
    np.testing.assert_array_equal(augmenter.stain(grey, np.random.default_rng(0)), grey)  # grey: left alone
    out = augmenter.stain(image, np.random.default_rng(0))
    assert not is_colour(out) and is_colour(image)  # grey = 1: every colour image ends grey
    np.testing.assert_array_equal(random_grey(image, [1.0, 0.0, 0.0])[..., 1], image[..., 0])
    # an H&E-like image (positive stain densities): no jitter (scale 1, shift 0) is the
    # identity, to the rounding of the colour deconvolution; more haematoxylin darkens it
    from skimage.color import hed2rgb

    he = np.round(hed2rgb(np.random.default_rng(1).uniform(0, 0.05, (32, 32, 3))) * 255).astype(np.uint8)
    assert np.abs(hed_jitter(he, np.ones(3), np.zeros(3)).astype(int) - he).max() <= 2
    assert hed_jitter(he, [1.5, 1.0, 1.0], np.zeros(3)).mean() < he.mean()


def test_rescale_changes_the_size_of_the_nuclei():
    """A zoom by up to 2 either way: the area of a nucleus changes by up to 4x, and over many
    draws both ways."""
    image, labels = _example()
    augmenter = Augmenter(AugmentSettings(affine=0, distort=0, rescale=1))
    areas = [int((augmenter.spatial(image, labels, np.random.default_rng(s))[1] == 3).sum()) for s in range(20)]
    assert min(areas) < 400 * 0.8 and max(areas) > 400 * 1.25 and max(areas) <= 400 * 4.5


def test_dim_nuclei_moves_the_chosen_nuclei_toward_the_background():
    """Bright nuclei on dark and dark nuclei on light alike: the dimmed ones come to
    b + (x - b) * factor, the others and the background stay, the input is not modified."""
    labels = np.zeros((8, 8), np.int32)
    labels[1:3, 1:3], labels[5:7, 5:7] = 1, 2
    for background, nucleus in ((10, 210), (230, 30)):
        image = np.full((8, 8, 3), background, np.uint8)
        image[labels > 0] = nucleus
        before = image.copy()
        out = dim_nuclei(image, labels, np.array([2]), 0.25)
        assert (image == before).all() and out.dtype == np.uint8
        assert (out[labels == 2] == round(background + (nucleus - background) * 0.25)).all()
        assert (out[labels != 2] == image[labels != 2]).all()
    assert dim_nuclei(image, np.ones((8, 8), np.int32), np.array([1]), 0.5) is image  # no background to move toward


def test_sparse_scene_dims_all_but_a_few_nuclei_and_draws_nothing_when_off():
    image, labels = disc_sample()
    ids = np.unique(labels)[1:]
    on = Augmenter(AugmentSettings(sparse=1.0))
    kept = set()
    for seed in range(16):
        out = on.sparse(image, labels, np.random.default_rng(seed))
        assert out.shape == image.shape and out.dtype == np.uint8 and (out[labels == 0] == image[labels == 0]).all()
        same = [i for i in ids if (out[labels == i] == image[labels == i]).all()]
        assert len(same) <= 3  # all but 0-3 nuclei dimmed: of four, one at least
        dimmed = [i for i in ids if i not in same]
        assert all((out[labels == i] < image[labels == i]).all() for i in dimmed)  # bright on dark: darker
        kept.add(len(same))
    assert kept == {0, 1, 2, 3}
    rng = np.random.default_rng(0)
    assert Augmenter(AugmentSettings()).sparse(image, labels, rng) is image
    assert rng.random() == np.random.default_rng(0).random()  # nothing drawn at 0
    one = np.where(labels == ids[0], labels, 0)
    assert on.sparse(image, one, np.random.default_rng(0)) is image  # one nucleus: nothing to set it against
