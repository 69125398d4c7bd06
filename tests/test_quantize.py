"""The int8 decoder (`carmask export --int8-decoder`, carmask.training.quantize): calibrated on
training photos only, the encoder left in fp32, and masks that agree with the fp32 file's on real
held-out Carvana photos."""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from carmask.apps.evaluate import dice_and_iou  # noqa: E402
from carmask.data.io import DataError, read_mask  # noqa: E402
from carmask.data.wild import read_wild, split_wild  # noqa: E402
from carmask.inference.model_files import ModelFileError, load_model_config, read_config  # noqa: E402
from carmask.inference.predictor import Predictor  # noqa: E402
from carmask.training.export import export_model_file  # noqa: E402
from carmask.training.quantize import calibration_photos  # noqa: E402

from conftest import make_kaggle_folder  # noqa: E402

SHIPPED = Path(__file__).parents[1] / "src/carmask/weights/carvana-unet-mnv2.safetensors"


def test_calibration_photos_are_training_photos_spread_over_cars_and_views(carvana):
    config = load_model_config("studio")
    held_out = set(config["training"]["val_car_ids"])
    photos = calibration_photos(carvana, config)
    names = [Path(p).stem for p in photos]
    assert len(set(names)) == len(names) == 24
    assert not {name[:12] for name in names} & held_out
    assert len({name[:12] for name in names}) >= 12  # many cars, not one car's 16 views
    assert len({name[13:] for name in names}) >= 8  # and many views


def test_too_few_calibration_photos_name_the_folder(carvana, tmp_path):
    folder = make_kaggle_folder(carvana, tmp_path / "kaggle", cars=1)  # 16 photos
    with pytest.raises(DataError, match=f"{folder}.*16 training photos.*needs 24"):
        calibration_photos(folder, load_model_config("studio"))


@pytest.fixture(scope="module")
def int8_studio(carvana, tmp_path_factory) -> Path:
    """The shipped studio model with its decoder in int8, calibrated on 6 photos (24 ship)."""
    out = tmp_path_factory.mktemp("int8") / "studio-int8.onnx"
    photos = calibration_photos(carvana, load_model_config("studio"), count=6)
    return export_model_file(SHIPPED, out, int8_photos=photos)


def test_only_the_decoder_is_int8(int8_studio):
    import onnx

    graph = onnx.load(str(int8_studio)).graph
    dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    int8 = {node.name for node in convs if node.input[1] in dequantized}
    assert int8 and all(name.startswith(("/decoder/", "/segmentation_head/")) for name in int8)
    assert not any(node.name.startswith("/decoder/") and node.name not in int8 for node in convs)
    assert read_config(int8_studio)["int8"] == "decoder"


def test_int8_decoder_masks_like_fp32_on_held_out_photos(int8_studio, carvana, tmp_path):
    config = load_model_config("studio")
    cars = config["training"]["val_car_ids"][:4]
    photos = [carvana / "train" / f"{car}_{view:02d}.jpg" for car, view in zip(cars, (1, 5, 9, 13))]
    # the same weights all in fp32 (the shipped .onnx has its decoder in int8 already)
    fp32 = Predictor(export_model_file(SHIPPED, tmp_path / "studio-fp32.onnx"))
    int8 = Predictor(int8_studio)
    for photo in photos:
        truth = read_mask(carvana / "train_masks" / f"{photo.stem}_mask.gif")
        mask_fp32, mask_int8 = next(fp32.predict_paths([photo])).mask, next(int8.predict_paths([photo])).mask
        assert dice_and_iou(mask_int8, mask_fp32)[0] > 0.999, photo.name
        # within a thousandth of the fp32 file against the true mask (on 160 photos: 0.00003)
        assert dice_and_iou(mask_int8, truth)[0] > dice_and_iou(mask_fp32, truth)[0] - 0.001, photo.name
        assert np.count_nonzero(mask_int8 != mask_fp32) < 0.001 * mask_int8.size


def test_int8_decoder_refuses_fp16(carvana, tmp_path):
    photos = calibration_photos(carvana, load_model_config("studio"), count=1)
    with pytest.raises(ModelFileError, match="leave --fp16 out"):
        export_model_file(SHIPPED, tmp_path / "x.onnx", fp16=True, int8_photos=photos)
    assert not (tmp_path / "x.onnx").exists()


def test_calibration_photos_of_an_outdoor_folder_are_its_training_photos(wild):
    training, held_out = split_wild(read_wild(wild))
    photos = calibration_photos(wild, load_model_config("general"))
    assert len(set(photos)) == len(photos) == 24
    assert set(photos) <= {p.image_path for p in training}
    assert not set(photos) & {p.image_path for p in held_out}
    kinds = {p.image_path: p.kind for p in training}
    assert {kinds[photo] for photo in photos} == {"camvid", "web"}  # street frames and product photos


def test_the_shipped_general_file_masks_like_its_fp32_weights(wild, tmp_path):
    """The shipped general ONNX file has its decoder in int8. On held-out street frames and
    product photos its masks are those of the same weights in fp32 (second look included) within
    a stated tolerance: under 0.5% of the pixels differ, and the mean Dice is within 0.003 (on all
    109 held-out photos: +0.0002)."""
    shipped = Predictor("general")
    assert shipped.config["int8"] == "decoder" and shipped.second_look is not None
    fp32 = Predictor(export_model_file(SHIPPED.with_name("general-unet-mnv2.safetensors"),
                                       tmp_path / "general-fp32.onnx"))
    held_out = split_wild(read_wild(wild))[1]
    photos = [p for p in held_out if p.kind == "camvid"][::12] + [p for p in held_out if p.kind == "web"][::12]
    differing, pixels, dice_int8, dice_fp32 = 0, 0, [], []
    for photo in photos:
        truth = read_mask(photo.mask_path) > 0
        mask_int8 = next(shipped.predict_paths([photo.image_path])).mask
        mask_fp32 = next(fp32.predict_paths([photo.image_path])).mask
        differing, pixels = differing + np.count_nonzero(mask_int8 != mask_fp32), pixels + truth.size
        dice_int8.append(dice_and_iou(mask_int8, truth)[0])
        dice_fp32.append(dice_and_iou(mask_fp32, truth)[0])
    assert differing < 0.005 * pixels
    assert np.mean(dice_int8) > np.mean(dice_fp32) - 0.003
    assert np.mean(dice_fp32) > 0.85  # the comparison is of masks that find the cars
