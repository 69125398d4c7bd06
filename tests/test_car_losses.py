"""Where a model loses car (carmask.apps.car_losses): holes enclosed by the mask it draws, and
the lower body cut off, counted on real masks with known damage."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd

from carmask.apps.car_losses import LOW_SHARE, car_loss_figures, car_loss_summary, filled
from carmask.data.io import read_mask


def test_filled_closes_what_a_mask_encloses_and_nothing_open():
    ring = np.zeros((9, 9), bool)
    ring[2:7, 2:7] = True
    ring[4, 4] = False  # enclosed
    cup = ring.copy()
    cup[0:5, 4] = False  # opens the middle to the top edge
    assert filled(ring)[4, 4] and filled(ring).sum() == 25
    assert not filled(cup)[4, 4]


def test_a_real_car_with_a_shadow_hole_and_a_cut_off_bumper(held_out):
    truth = read_mask(held_out[1])
    assert car_loss_figures(truth, truth) == {**car_loss_figures(truth, truth), "hole_pixels": 0,
                                              "holes": 0, "low_missed": 0, "high_missed": 0}
    ys, xs = np.nonzero(truth)
    top, bottom = ys.min(), ys.max()
    middle = (ys.mean().astype(int), xs.mean().astype(int))

    holed = truth.copy()
    cv2.circle(holed.view(np.uint8), middle[::-1], 40, 0, -1)  # a hole in the body
    figures = car_loss_figures(holed, truth)
    assert figures["holes"] == 1
    assert figures["hole_pixels"] == (truth & ~holed).sum() > 4000
    assert figures["low_missed"] == 0 and figures["high_missed"] == figures["hole_pixels"]

    cut = truth.copy()
    cut[bottom - int(0.1 * (bottom - top)):] = False  # the lowest tenth of the car is lost
    figures = car_loss_figures(cut, truth)
    assert figures["holes"] == 0 and figures["hole_pixels"] == 0  # open to the outside: no hole
    assert figures["high_missed"] == 0
    assert figures["low_missed"] == (truth & ~cut).sum()
    assert 0.1 < figures["low_missed"] / figures["low_pixels"] < 0.8  # wheels: a narrow bottom tenth
    assert abs(figures["low_pixels"] / figures["car_pixels"] - LOW_SHARE) < 0.15

    summary = car_loss_summary(pd.DataFrame([car_loss_figures(m, truth) for m in (truth, holed, cut)]))
    assert summary["photos_with_a_hole"] == 1 and summary["holes"] == 1
    assert summary["lower_body_missed"] > 10 * summary["upper_body_missed"] > 0
