"""Hard shadows, contact shadows and highlights over car bodies, as augmentation for the general
model (users saw holes in car bodies under a carport's shadow and in sunlit reflections, and the
lower front cut off): the picture changes where the light falls, the mask never does."""

from __future__ import annotations

import json
from dataclasses import asdict

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from carmask.cli import app
from carmask.data.io import read_mask, read_photo
from carmask.training.data.dataset import fit_mask
from carmask.training.data.shadows import (ShadowConfig, cast_shadow, cast_shadow_map, contact_shadow,
                                           contact_shadow_map, highlight_map, shadows_and_highlights,
                                           specular_highlight)
from conftest import real_cars


@pytest.fixture(scope="module")
def car(carvana):
    """A real Carvana photo (its 3/4 front view) at 320x480 and its bool mask."""
    name = f"{real_cars(carvana, 1)[0]}_03"
    photo = read_photo(carvana / "train" / f"{name}.jpg", cover=(320, 480)).pixels
    photo = cv2.resize(photo, (480, 320), interpolation=cv2.INTER_AREA)
    mask = fit_mask(read_mask(carvana / "train_masks" / f"{name}_mask.gif"), (320, 480))
    assert 0.05 < mask.mean() < 0.6
    return photo, mask


def test_a_cast_shadow_darkens_part_of_the_car_and_nothing_far_from_it(car):
    photo, mask = car
    before = mask.copy()
    for seed in range(5):
        shadow = cast_shadow_map(mask, np.random.default_rng(seed))
        out = cast_shadow(photo, mask, np.random.default_rng(seed))  # the same map, then the shade
        assert np.array_equal(mask, before) and out.shape == photo.shape and out.dtype == np.uint8
        covered = shadow[mask].mean()
        assert 0 < covered < 1  # the shadow's edge crosses the body
        inside = mask & (shadow > 0.99) & (photo.max(axis=2) > 30)
        assert inside.sum() > 50
        assert (out[inside] <= photo[inside]).all()
        assert out[inside].mean() < 0.7 * photo[inside].mean()  # x0.25-0.6, a little bluer
        far = cv2.dilate((shadow > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) == 0
        assert (mask & far).any() and np.array_equal(out[far], photo[far])


def test_a_cast_shadow_falls_on_empty_ground_too():
    ground = np.full((120, 160, 3), 180, np.uint8)
    empty = np.zeros((120, 160), bool)
    out = cast_shadow(ground, empty, np.random.default_rng(0))
    assert (out < 180).any() and (out <= 180).all()
    for effect in (specular_highlight, contact_shadow):  # no car: nothing to shine or stand
        assert np.array_equal(effect(ground, empty, np.random.default_rng(0)), ground)


def test_a_highlight_brightens_the_body_and_stays_on_it(car):
    photo, mask = car
    for seed in range(3):
        glare = highlight_map(mask, np.random.default_rng(seed))
        out = specular_highlight(photo, mask, np.random.default_rng(seed))
        changed = (out != photo).any(axis=2)
        assert changed.sum() > 20 and not (changed & ~mask).any()
        assert (out[changed] >= photo[changed]).all()  # light is only added
        assert out[changed].mean() > photo[changed].mean() + 20
        core = glare > 0.8
        assert core.any() and out[core].min() > 175  # near-white where it shines most


def test_a_contact_shadow_darkens_the_lower_car_and_the_ground_below_it(car):
    photo, mask = car
    rows = np.nonzero(mask.any(axis=1))[0]
    top, bottom = rows[0], rows[-1] + 1
    band = (bottom - top) // 5
    upper, lower = mask.copy(), mask.copy()
    upper[top + band:], lower[:bottom - band] = False, False
    for seed in range(3):
        out = contact_shadow(photo, mask, np.random.default_rng(seed)).astype(float)
        light = lambda region: out[region].mean() / photo[region].mean()  # noqa: E731
        assert light(upper) == pytest.approx(1.0, abs=0.01)  # the roof in full light
        assert light(lower) < 0.75  # bumpers, sills, tyres in shade
        shade = contact_shadow_map(mask, np.random.default_rng(seed))
        assert (shade[bottom:bottom + 3] > 0.2).any()  # and the ground just below the car
        assert not shade[:top].any()


def test_the_same_seed_gives_the_same_picture(car):
    photo, mask = car
    first = shadows_and_highlights(photo, mask, np.random.default_rng(7))
    assert np.array_equal(first, shadows_and_highlights(photo, mask, np.random.default_rng(7)))
    others = [shadows_and_highlights(photo, mask, np.random.default_rng(seed)) for seed in range(3)]
    assert all((picture != photo).any() for picture in others)
    assert not np.array_equal(others[0], others[1])
    only = ShadowConfig(cast=0, highlight=0, contact=1)  # each effect can be switched off
    out = shadows_and_highlights(photo, mask, np.random.default_rng(7), only)
    top = np.nonzero(mask.any(axis=1))[0][0]
    assert (out != photo).any() and np.array_equal(out[:top + 5], photo[:top + 5])


def plain_mix(shadows: float):
    """A training mix of pasted cars only, without captions, people or any later augmentation,
    so a sample's picture and mask are the pasted ones."""
    from carmask.training.data.anywhere import MixConfig
    from carmask.training.data.transforms import AugmentConfig

    return MixConfig(wild=0.0, studio=0.0, caption=0.0, people=0.0, shadows=shadows,
                     augment=AugmentConfig(hflip=False, scale=(1.0, 1.0), shift=0.0, color_jitter=0.0))


def test_the_training_mix_shades_pictures_but_never_their_masks(carvana):
    from carmask.data.layout import index_dataset
    from carmask.training.data.anywhere import AnywhereDataset, MixConfig

    studio = [r for r in index_dataset(carvana, check_pixels=False).train if r.mask_path][:8]
    never = AnywhereDataset([], studio, (96, 128), 4, plain_mix(0.0))
    always = AnywhereDataset([], studio, (96, 128), 4, plain_mix(1.0))
    torch.manual_seed(0)
    changed = 0
    for index in range(3):
        (plain, plain_mask), (shaded, shaded_mask) = never[index], always[index]
        assert torch.equal(plain_mask, shaded_mask) and plain_mask.sum() > 0
        changed += int(not torch.equal(plain, shaded))
    assert changed >= 2
    assert MixConfig().shadows == 0.0  # the shipped recipe draws none
    for share in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="shadows share must be from 0 to 1"):
            MixConfig(shadows=share)


def test_real_outdoor_photos_are_shaded_with_their_masks_kept(wild):
    from carmask.data.wild import read_wild, split_wild
    from carmask.training.data.anywhere import AnywhereDataset

    training, _ = split_wild(read_wild(wild))
    web = [p for p in training if p.kind == "web"][:3]
    never = AnywhereDataset(web, [], (96, 128), 4, plain_mix(0.0))
    always = AnywhereDataset(web, [], (96, 128), 4, plain_mix(1.0))
    changed = 0
    for photo in web:
        plain, plain_mask = never._real_photo(photo, np.random.default_rng(1))
        shaded, shaded_mask = always._real_photo(photo, np.random.default_rng(1))
        assert np.array_equal(plain_mask, shaded_mask)
        changed += int((plain != shaded).any())
    assert changed >= 2


def test_train_general_takes_the_shadow_share_and_records_it(train_general_cli):
    configs = train_general_cli.configs
    for options in (["--shadow-share", "0.4"], []):
        result = train_general_cli.invoke(*options)
        assert result.exit_code == 0, result.output
    assert (configs[0].mix.shadows, configs[1].mix.shadows) == (0.4, 0.0)
    recorded = json.loads(json.dumps(asdict(configs[0].mix)))  # as the run's summary writes it
    assert recorded["shadows"] == 0.4 and recorded["shadow_style"]["darkness"] == [0.25, 0.6]
    assert "--shadow-share" in CliRunner().invoke(app, ["train-general", "--help"],
                                                  env={"COLUMNS": "200"}).output
