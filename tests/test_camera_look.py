"""Another camera's look (white balance, a JPEG re-save, blur, noise) as augmentation for the
general model: the held-out street frames, all from the training frames' camera, lost 0.07-0.12
Dice to each of these. The picture changes, the mask never does, and a run that asks for none
draws the samples it always did."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from carmask.training.data.transforms import AugmentConfig, CameraConfig, camera_transforms


def plain_mix(camera: float, **style):
    """Real outdoor photos only, without captions, people, shadows or geometry, so a sample's
    picture is the photo's own unless the camera changes it."""
    from carmask.training.data.anywhere import MixConfig

    return MixConfig(wild=1.0, studio=0.0, caption=0.0, people=0.0, street_cars=0.0, camera=camera,
                     camera_style=CameraConfig(**style),
                     augment=AugmentConfig(hflip=False, scale=(1.0, 1.0), shift=0.0, color_jitter=0.0))


@pytest.fixture(scope="module")
def outdoor(wild):
    from carmask.data.wild import read_wild, split_wild

    training, _ = split_wild(read_wild(wild))
    photos = [p for p in training if p.kind == "web"][:2] + [p for p in training if p.kind == "camvid"][:2]
    assert len(photos) == 4
    return photos


def test_each_change_moves_the_picture_and_keeps_the_mask(outdoor):
    from carmask.data.io import read_image, read_mask

    photo = outdoor[0]
    image = tv_tensors.Image(torch.from_numpy(read_image(photo.image_path)).permute(2, 0, 1).contiguous())
    mask = tv_tensors.Mask(torch.from_numpy(read_mask(photo.mask_path))[None])
    always = camera_transforms(CameraConfig(each=1.0))
    torch.manual_seed(3)
    changed, kept = always(image, mask)
    assert changed.dtype == torch.uint8 and changed.shape == image.shape and torch.equal(kept, mask)
    assert (changed.float() - image.float()).abs().mean() > 2
    torch.manual_seed(3)
    assert torch.equal(always(image, mask)[0], changed)  # seeded: a run repeats itself
    never = camera_transforms(CameraConfig(each=0.0))
    assert torch.equal(never(image), image)
    # white balance moves red and blue by at most its strength, and never green
    from carmask.training.data.transforms import _white_balance

    grey = tv_tensors.Image(torch.full((3, 8, 8), 100, dtype=torch.uint8))
    for _ in range(20):
        balanced = _white_balance(grey, 0.25)[:, 0, 0].tolist()
        assert balanced[1] == 100 and all(74 <= value <= 125 for value in balanced)


def test_the_training_mix_changes_the_look_but_never_the_masks(outdoor):
    from carmask.training.data.anywhere import AnywhereDataset, MixConfig

    never = AnywhereDataset(outdoor, [], (96, 128), 8, plain_mix(0.0))
    always = AnywhereDataset(outdoor, [], (96, 128), 8, plain_mix(1.0))
    other_style = AnywhereDataset(outdoor, [], (96, 128), 8, plain_mix(0.0, each=1.0, jpeg=(5, 6)))
    torch.manual_seed(0)
    changed = 0
    for index in range(8):
        (plain, plain_mask), (looked, looked_mask) = never[index], always[index]
        assert torch.equal(plain_mask, looked_mask) and plain_mask.sum() > 0
        changed += int(not torch.equal(plain, looked))
        # at share 0 nothing is drawn: the same samples, whatever the camera's settings
        assert torch.equal(other_style[index][0], plain)
    assert changed >= 3  # each change comes half the time: a sample may get none
    assert MixConfig().camera == 0.0  # the shipped recipe draws none
    with pytest.raises(ValueError, match="camera share must be from 0 to 1"):
        MixConfig(camera=1.5)


def test_train_general_takes_the_camera_share_and_records_it(train_general_cli):
    configs = train_general_cli.configs
    for options in (["--camera-share", "0.3"], []):
        result = train_general_cli.invoke(*options)
        assert result.exit_code == 0, result.output
    assert (configs[0].mix.camera, configs[1].mix.camera) == (0.3, 0.0)
    recorded = json.loads(json.dumps(asdict(configs[0].mix)))  # as the run's summary writes it
    assert recorded["camera"] == 0.3 and recorded["camera_style"]["jpeg"] == [20, 85]
    assert replace(configs[0].mix, camera=0.0) == configs[1].mix  # nothing else moved
    result = train_general_cli.invoke("--camera-share", "0.3", "--camera-changes", "noise, jpeg")
    assert result.exit_code == 0, result.output
    assert configs[-1].mix.camera_style.changes == ("noise", "jpeg")
    refused = train_general_cli.invoke("--camera-changes", "noise,sepia")
    assert refused.exit_code == 1 and "--camera-changes noise,sepia" in refused.output
    assert "sepia" in refused.output and len(configs) == 3


def test_only_the_changes_asked_for_are_drawn(outdoor):
    from carmask.data.io import read_image

    image = tv_tensors.Image(torch.from_numpy(read_image(outdoor[2].image_path)).permute(2, 0, 1).contiguous())
    noise_only = camera_transforms(CameraConfig(each=1.0, changes=("noise",)))
    torch.manual_seed(0)
    noisy = noise_only(image).float()
    difference = noisy - image.float()
    # noise alone: the mean colour stays (no white balance), the pixels scatter around it
    assert difference.mean(dim=(1, 2)).abs().max() < 1.5 and difference.std() > 0.5
    white_balance_only = camera_transforms(CameraConfig(each=1.0, changes=("white_balance",)))
    torch.manual_seed(0)
    balanced = white_balance_only(image)
    assert torch.equal(balanced[1], image[1])  # green untouched: no JPEG, blur or noise
    with pytest.raises(ValueError, match="camera changes must be some of"):
        CameraConfig(changes=("sepia",))


def test_the_benchmark_looks_change_a_real_photo_as_named(outdoor):
    """benchmarks/camera_looks.py's changes, which measure this weakness: each moves the photo,
    keeps its size but for "half size", and the white balances move red and blue only."""
    import importlib.util
    from pathlib import Path

    from PIL import Image

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "camera_looks.py"
    spec = importlib.util.spec_from_file_location("camera_looks", path)
    looks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(looks)
    photo = Image.open(outdoor[0].image_path).convert("RGB")
    pixels = np.asarray(photo).astype(float)
    for name, change in looks.LOOKS.items():
        changed = change(photo)
        if name == "as is":
            assert changed is photo
            continue
        expected = (photo.width // 2, photo.height // 2) if name == "half size" else photo.size
        assert changed.size == expected and changed.mode == "RGB", name
        if name != "half size":
            assert np.abs(np.asarray(changed).astype(float) - pixels).mean() > 0.5, name
    warm = np.asarray(looks.LOOKS["warm (red x1.15, blue x0.75)"](photo)).astype(float)
    assert np.array_equal(warm[..., 1], pixels[..., 1]) and warm[..., 2].mean() < pixels[..., 2].mean()
    assert looks.dice_and_iou(np.ones((2, 2), bool), np.ones((2, 2), bool))[0] == 1.0
    assert looks.dice_and_iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool))[0] == 1.0
