import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from carmask.data import index_dataset, read_image, read_mask
from carmask.training.data.dataset import (IMAGENET_MEAN, IMAGENET_STD, PhotoDataset, SegmentationDataset,
                                  decode_reduction)
from carmask.training.data.transforms import AugmentConfig, train_transforms


@pytest.fixture(scope="module")
def records(carvana):
    return index_dataset(carvana, check_pixels=False).train[:16]


def test_decode_reduction_covers_the_target_within_a_pixel():
    assert decode_reduction((1280, 1918), (160, 240)) == 8  # libjpeg gives 240 (rounds up)
    assert decode_reduction((1280, 1918), (320, 480)) == 4
    assert decode_reduction((1280, 1918), (640, 960)) == 2  # 959 wide: one pixel short is fine
    assert decode_reduction((1280, 1918), (320, 482)) == 2  # two pixels short is not
    assert decode_reduction((1280, 1918), (1024, 1536)) == 1


def test_libjpeg_reduced_sizes_round_up(tmp_path):
    from PIL import Image
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (1918, 1280), "gray").save(photo)
    sizes = {reduce: read_image(photo, reduce=reduce).shape[:2] for reduce in (2, 4, 8)}
    assert sizes == {2: (640, 959), 4: (320, 480), 8: (160, 240)}


@pytest.mark.parametrize("size", [(320, 480), (224, 224), (1280, 1920)])
def test_items_have_the_training_size(records, size):
    image, mask = SegmentationDataset(records, size)[0]
    assert image.shape == (3, *size) and image.dtype == torch.float32
    assert mask.shape == (1, *size) and set(mask.unique().tolist()) <= {0.0, 1.0}


def test_resized_mask_matches_the_real_mask(records):
    record = records[4]
    _, mask = SegmentationDataset(records[4:5], (640, 959))[0]
    truth = read_mask(record.mask_path)
    coarse = truth.reshape(640, 2, 959, 2).mean(axis=(1, 3)) >= 0.5
    assert (mask[0].numpy().astype(bool) == coarse).mean() > 0.999


def test_photo_is_normalised_with_the_given_statistics(records):
    image, _ = SegmentationDataset(records[:1], (640, 959))[0]  # exactly the 1/2 decode
    raw = read_image(records[0].image_path, reduce=2)
    expected = (raw[..., 0] / 255.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert torch.allclose(image[0], torch.from_numpy(expected).float(), atol=1e-5)


def test_grayscale_for_single_channel_models(records):
    image, _ = SegmentationDataset(records[:1], (224, 224), mean=(0.5,), std=(0.5,), channels=1)[0]
    assert image.shape == (1, 224, 224)


def test_augmentation_moves_photo_and_mask_together(records):
    torch.manual_seed(0)
    plain = SegmentationDataset(records[:1], (160, 240))
    flipped = SegmentationDataset(records[:1], (160, 240), transform=v2.RandomHorizontalFlip(p=1))
    (image, mask), (image_f, mask_f) = plain[0], flipped[0]
    assert torch.equal(image_f, image.flip(-1)) and torch.equal(mask_f, mask.flip(-1))
    # Scale/shift/jitter: the mask stays binary and still covers the (moved) car.
    augmented = SegmentationDataset(records[:1], (160, 240), transform=train_transforms(
        AugmentConfig(vflip=True, scale=(0.8, 1.2), shift=0.1, color_jitter=0.3)))
    for _ in range(5):
        image_a, mask_a = augmented[0]
        assert set(mask_a.unique().tolist()) <= {0.0, 1.0}
        assert 0.5 < mask_a.mean() / mask.mean() < 2.0


def test_colour_jitter_changes_the_photo_but_not_the_mask(records):
    torch.manual_seed(1)
    jitter = SegmentationDataset(records[:1], (160, 240), transform=v2.ColorJitter(brightness=0.5))
    plain = SegmentationDataset(records[:1], (160, 240))
    (image_j, mask_j), (image, mask) = jitter[0], plain[0]
    assert not torch.equal(image_j, image) and torch.equal(mask_j, mask)


def test_photo_dataset_for_prediction(carvana):
    paths = sorted((carvana / "test").glob("*.jpg"))[:3]
    dataset = PhotoDataset(paths, (320, 480))
    image, index = dataset[2]
    assert image.shape == (3, 320, 480) and index == 2


def test_records_without_masks_are_refused(carvana):
    test_records = index_dataset(carvana, check_pixels=False).test
    with pytest.raises(ValueError, match="have no mask"):
        SegmentationDataset(test_records, (64, 64))


def test_pasted_cars_keep_their_masks_pixel_for_pixel(held_out):
    """A real car laid on a plain magenta wall: away from the outline's own pixel, every mask
    pixel is car and every other pixel is the untouched wall, at any scale, place and flip."""
    import cv2

    from carmask.data.io import read_mask, read_photo
    from carmask.training.data.paste import PasteConfig, paste_car

    photo, truth = read_photo(held_out[0]).pixels, read_mask(held_out[1])
    wall = np.zeros((360, 480, 3), np.uint8)
    wall[...] = (255, 0, 255)
    plain = PasteConfig(colour=0.0, blur=(0.0, 0.0), shadow=(0.0, 0.0))
    kernel = np.ones((3, 3), np.uint8)
    for seed in range(6):
        image, mask = paste_car(photo, truth, wall, np.random.default_rng(seed), plain)
        assert image.shape == wall.shape and mask.shape == wall.shape[:2]
        inside = cv2.erode(mask.astype(np.uint8), kernel).astype(bool)
        outside = ~cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)
        assert inside.sum() > 0.1 * mask.sum() > 0
        is_wall = (image == (255, 0, 255)).all(axis=2)
        assert is_wall[outside].all()  # nothing of the car leaks out of its mask
        assert not is_wall[inside].any()  # and the mask covers car, not wall
    # The car keeps its proportions: the mask's box has the true mask's aspect ratio.
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    true_rows, true_cols = np.nonzero(truth.any(axis=1))[0], np.nonzero(truth.any(axis=0))[0]
    aspect = (cols[-1] - cols[0] + 1) / (rows[-1] - rows[0] + 1)
    assert aspect == pytest.approx((true_cols[-1] - true_cols[0] + 1) / (true_rows[-1] - true_rows[0] + 1), rel=0.03)


def test_paste_shadow_and_colour_change_only_what_they_should(held_out):
    from carmask.data.io import read_mask, read_photo
    from carmask.training.data.paste import PasteConfig, paste_car

    photo, truth = read_photo(held_out[0]).pixels, read_mask(held_out[1])
    wall = np.full((360, 480, 3), 200, np.uint8)
    shaded = PasteConfig(colour=0.0, blur=(0.0, 0.0), shadow=(0.5, 0.5), ground=(0.8, 0.8))
    image, mask = paste_car(photo, truth, wall, np.random.default_rng(1), shaded)
    rows = np.nonzero(mask.any(axis=1))[0]
    below = image[rows[-1] - 2:rows[-1] + 3][~mask[rows[-1] - 2:rows[-1] + 3]]
    assert below.size and below.mean() < 190  # the ground under the car is darker
    assert (image[:20] == 200).all()  # the sky is not


def test_a_reflection_on_a_glossy_floor_is_not_car(held_out):
    """With `reflection`, the car's mirror image lies below its wheels; the mask is the same as
    without it, so the reflection is taught as not car."""
    import cv2

    from carmask.data.io import read_mask, read_photo
    from carmask.training.data.paste import PasteConfig, paste_car

    photo, truth = read_photo(held_out[0]).pixels, read_mask(held_out[1])
    floor = np.full((360, 480, 3), 60, np.uint8)
    plain = PasteConfig(colour=0.0, blur=(0.0, 0.0), shadow=(0.0, 0.0), ground=(0.6, 0.6))
    glossy = PasteConfig(colour=0.0, blur=(0.0, 0.0), shadow=(0.0, 0.0), ground=(0.6, 0.6),
                         reflection=1.0, reflection_strength=(0.5, 0.5))
    image, mask = paste_car(photo, truth, floor, np.random.default_rng(3), plain)
    mirrored, same_mask = paste_car(photo, truth, floor, np.random.default_rng(3), glossy)
    np.testing.assert_array_equal(same_mask, mask)
    rows = np.nonzero(mask.any(axis=1))[0]
    bottom, depth = rows[-1] + 1, 20
    footprint = np.zeros_like(mask)  # the car's mask mirrored about its lowest row
    footprint[bottom:bottom + depth] = mask[bottom - depth:bottom][::-1]
    changed = (mirrored != image).any(axis=2)
    assert (image[bottom:] == 60).all()  # no reflection: the bare floor
    assert changed[footprint].mean() > 0.8  # the car, mirrored and faint
    near = cv2.dilate(footprint.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert not changed[:bottom].any() and not changed[bottom:bottom + depth][~near[bottom:bottom + depth]].any()


def test_a_caption_is_written_over_the_picture():
    """Dealers' captions and stock watermarks: a line of letters somewhere on the picture, the
    rest untouched (the mask is not passed in, so it cannot change)."""
    from carmask.training.data.paste import overlay_caption

    wall = np.full((360, 480, 3), 128, np.uint8)
    for seed in range(8):
        out = overlay_caption(wall, np.random.default_rng(seed))
        assert out.shape == wall.shape and out.dtype == np.uint8
        changed = (out != 128).any(axis=2)
        assert 0 < changed.mean() < 0.2, seed  # letters, not a veil over the picture


def test_a_street_photos_own_cars_stay_in_the_mask(held_out):
    from carmask.data.io import read_mask, read_photo
    from carmask.training.data.paste import PasteConfig, paste_car

    photo, truth = read_photo(held_out[0]).pixels, read_mask(held_out[1])
    street = np.full((360, 480, 3), 90, np.uint8)
    parked = np.zeros((360, 480), bool)
    parked[20:60, 10:470] = True  # a row of parked cars across the top
    plain = PasteConfig(colour=0.0, blur=(0.0, 0.0), shadow=(0.0, 0.0), ground=(0.9, 0.9))
    image, mask = paste_car(photo, truth, street, np.random.default_rng(0), plain, background_mask=parked)
    assert mask[parked].all()  # the parked cars are still car (the pasted one stands below them)
    pasted = mask & ~parked
    assert pasted.sum() > 1000 and not (image[pasted] == 90).all(axis=1).all()


def test_a_panning_shot_streaks_the_background_and_not_the_car(held_out):
    """With `motion`, the background is smeared sideways (a camera panning with the car); the
    car stays sharp and its mask exact, and a street's own cars, which would be smeared into
    neither car nor not, are painted out of the picture and the mask."""
    import cv2

    from carmask.data.io import read_mask, read_photo
    from carmask.training.data.paste import PasteConfig, motion_blur, paste_car

    photo, truth = read_photo(held_out[0]).pixels, read_mask(held_out[1])
    stripes = np.zeros((360, 480, 3), np.uint8)
    stripes[:, ::8] = 255  # vertical lines: a sideways streak turns them grey
    panning = PasteConfig(colour=0.0, blur=(0.0, 0.0), shadow=(0.0, 0.0), motion=1.0, motion_length=(0.1, 0.1))
    parked = np.zeros((360, 480), bool)
    parked[20:60, 10:470] = True
    image, mask = paste_car(photo, truth, stripes, np.random.default_rng(0), panning, background_mask=parked)
    streaked = motion_blur(stripes, 48)
    outside = ~cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    outside[:80] = False  # where the parked cars were painted out
    assert np.abs(image[outside].astype(int) - streaked[outside]).max() <= 1
    assert 20 < streaked[outside].mean() < 60 and not np.isin(streaked[outside], (0, 255)).all()
    assert not mask[parked].any() and mask.sum() > 1000


def test_small_pasted_cars_are_as_small_as_distant_street_cars(held_out):
    """With `small` set, that share of pasted cars is drawn a few percent of the picture wide
    (the street's distant cars), and their masks still hold the car."""
    from carmask.data.io import read_mask, read_photo
    from carmask.training.data.paste import PasteConfig, paste_car

    photo, truth = read_photo(held_out[0]).pixels, read_mask(held_out[1])
    wall = np.full((360, 480, 3), 90, np.uint8)
    tiny = PasteConfig(colour=0.0, blur=(0.0, 0.0), shadow=(0.0, 0.0), small=1.0, small_width=(0.03, 0.06))
    for seed in range(5):
        image, mask = paste_car(photo, truth, wall, np.random.default_rng(seed), tiny)
        cols = np.nonzero(mask.any(axis=0))[0]
        assert 0.02 * 480 <= cols[-1] - cols[0] + 1 <= 0.07 * 480
        assert not (image[mask] == 90).all(axis=1).all()  # the car is there, not the wall
    # by default (small=0) no car is pasted that small
    cols = np.nonzero(paste_car(photo, truth, wall, np.random.default_rng(0), PasteConfig())[1].any(axis=0))[0]
    assert cols[-1] - cols[0] + 1 >= 0.3 * 480
