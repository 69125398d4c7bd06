"""The model carmask ships: present, small, offline-loadable, and good on cars it never saw."""

import numpy as np

from carmask.data.io import read_mask
from carmask.data.layout import index_dataset
from carmask.data.split import recorded_validation
from carmask.apps.evaluate import dice_and_iou
from carmask.training.models.io import SHIPPED_MODEL, read_config
from carmask.inference.predictor import Predictor


def test_shipped_model_file():
    assert SHIPPED_MODEL.is_file(), f"{SHIPPED_MODEL} is missing"
    assert SHIPPED_MODEL.stat().st_size < 20 * 2**20
    config = read_config(SHIPPED_MODEL)
    assert config["architecture"] == "unet-mnv2" and config["output"] == "logit"
    assert config["training"]["best_val_dice_full"] > 0.98


def test_shipped_model_on_real_validation_cars(carvana):
    """A few photos of the held-out cars recorded in the model file, scored at 1280x1918."""
    training = read_config(SHIPPED_MODEL)["training"]
    records = [r for r in index_dataset(carvana, check_pixels=False).train if r.mask_path]
    validation = recorded_validation(records, training)
    assert {r.car_id for r in validation} == set(training["val_car_ids"])
    assert len(training["val_car_ids"]) == training["val_cars"]
    picks = validation[::max(1, len(validation) // 6)][:6]  # several cars and views
    predictor = Predictor()  # the default model is the shipped one
    scores = []
    for record, prediction in zip(picks, predictor.predict_paths([r.image_path for r in picks])):
        truth = read_mask(record.mask_path)
        assert prediction.mask.shape == truth.shape == (1280, 1918)
        scores.append(dice_and_iou(prediction.mask, truth)[0])
    assert np.mean(scores) >= 0.98, scores
