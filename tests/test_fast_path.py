"""The fast path of a submission (issue 13, `Predictor.predict_runs`): photos go to the device as
uint8, are normalised there, and only each mask's runs come back. Run here on the CPU with the
torch backend (the same code a GPU runs), it must write byte for byte the plain path's
submission, and keep streaming, --resume, --shard and failure listing working."""

from __future__ import annotations

import numpy as np
import pytest

from carmask.kaggle import rle
from carmask.inference.predictor import Predictor
from carmask.inference.job import run_prediction, shard_of
from carmask.kaggle.submission import check_submission, merge_submissions


@pytest.fixture(scope="module")
def shipped_torch():
    """The shipped studio model (no refiner, logit output) on torch, on the CPU."""
    return Predictor(None, backend="torch", device="cpu")


def test_fast_submission_is_byte_identical_on_every_real_test_photo(carvana, shipped_torch, tmp_path):
    """All the real test photos (45) at the model's own size, batch 4: the fast path's CSV is the
    plain path's, byte for byte, and so are the models and warnings it reports. About 2
    minutes on 2 busy CPU cores (the forward pass twice; the rest is small)."""
    photos = {p.name: p for p in sorted((carvana / "test").glob("*.jpg"))}
    if not photos:
        pytest.skip(f"no test photos in {carvana / 'test'}")
    names = list(photos)
    assert shipped_torch.finds_runs and shipped_torch.refiner is None
    plain = run_prediction(shipped_torch, photos, names, submission=tmp_path / "plain.csv", fast=False)
    fast = run_prediction(shipped_torch, photos, names, submission=tmp_path / "fast.csv", fast=True)
    assert plain.predicted == fast.predicted == len(photos) and fast.complete
    assert (tmp_path / "fast.csv").read_bytes() == (tmp_path / "plain.csv").read_bytes()
    assert fast.models == plain.models and fast.warnings == plain.warnings
    assert check_submission(tmp_path / "fast.csv", names).ok


@pytest.fixture(scope="module")
def model(synth_run):
    return synth_run[0] / "model.safetensors"


@pytest.fixture(scope="module")
def synth_torch(model):
    return Predictor(model, backend="torch", device="cpu", batch=4)


@pytest.fixture(scope="module")
def photos(synth_data):
    return {p.name: p for p in sorted((synth_data / "test").glob("*.jpg"))}


def test_runs_masks_and_confidence_match_the_plain_path_with_tta_and_mixed_sizes(model, photos, tmp_path):
    """One batch holding photos of three sizes (three upsamplings), one of them a portrait
    photo (padded at its sides), with flip TTA: each photo's runs are `rle.runs` of its plain
    mask, and its confidence is `assess`'s."""
    import cv2

    paths = list(photos.values())[:5]
    smaller, portrait = tmp_path / "smaller.jpg", tmp_path / "portrait.jpg"
    cv2.imwrite(str(smaller), cv2.resize(cv2.imread(str(paths[1])), (150, 100)))
    cv2.imwrite(str(portrait), cv2.imread(str(paths[3]))[:, 40:100])
    paths.insert(2, smaller)
    paths.insert(4, portrait)
    predictor = Predictor(model, backend="torch", device="cpu", batch=4, tta=True)
    assert predictor.columns(cv2.imread(str(portrait)).shape[:2]) != slice(0, predictor.size[1])
    plain = list(predictor.predict_paths(paths))
    fast = list(predictor.predict_runs(paths))
    assert fast[2].runs is not None and plain[2].mask.shape == (100, 150)
    for a, b in zip(plain, fast):
        assert b.mask is None and np.array_equal(b.runs, rle.runs(a.mask))
        assert b.rle == a.rle == rle.encode(a.mask)
        assert b.confidence == a.confidence and b.model == a.model == "studio"


def test_the_job_takes_the_fast_path_for_a_submission_alone(synth_torch, photos, tmp_path, monkeypatch):
    calls = []
    from carmask.training.torch_backend import TorchPredictor

    monkeypatch.setattr(TorchPredictor, "predict_runs",
                        lambda self, *a, real=TorchPredictor.predict_runs, **k: calls.append(1) or real(self, *a, **k))
    names = list(photos)[:4]
    run_prediction(synth_torch, photos, names, submission=tmp_path / "a.csv")
    assert calls == [1]  # a submission alone on torch: fast
    run_prediction(synth_torch, photos, names, submission=tmp_path / "b.csv", masks_dir=tmp_path / "m")
    onnx = Predictor(synth_torch.path, backend="onnx")
    run_prediction(onnx, photos, names, submission=tmp_path / "c.csv")
    assert calls == [1]  # mask files, or onnxruntime: the plain path
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    with pytest.raises(ValueError, match="predict_runs needs the torch backend"):
        next(onnx.predict_runs(list(photos.values())[:1]))


def test_an_interrupted_fast_run_resumes_to_the_same_bytes(synth_torch, photos, tmp_path):
    names = list(photos)
    reference = tmp_path / "reference.csv"
    run_prediction(synth_torch, photos, names, submission=reference, fast=False)

    def stop_after_ten(items, **_):
        for done, item in enumerate(items):
            if done == 10:
                raise KeyboardInterrupt
            yield item

    out = tmp_path / "sub.csv"
    with pytest.raises(KeyboardInterrupt):
        run_prediction(synth_torch, photos, names, submission=out, track=stop_after_ten)
    kept = (tmp_path / "sub.csv.spool").read_bytes().count(b"\n")
    assert not out.exists() and kept == 10
    resumed = run_prediction(synth_torch, photos, names, submission=out, resume=True)
    assert resumed.resumed == kept and resumed.predicted == len(names) - kept
    assert out.read_bytes() == reference.read_bytes()


def test_fast_shards_merge_into_the_plain_single_run(synth_torch, photos, tmp_path):
    names = list(photos)
    single = tmp_path / "single.csv"
    run_prediction(synth_torch, photos, names, submission=single, fast=False)
    shards = [tmp_path / f"shard{i}.csv" for i in range(3)]
    for index, shard in enumerate(shards):
        run_prediction(synth_torch, photos, shard_of(names, (index, 3)), submission=shard)
    assert merge_submissions(shards, tmp_path / "merged.csv", names) == []
    assert (tmp_path / "merged.csv").read_bytes() == single.read_bytes()


def test_fast_path_lists_bad_photos_as_the_plain_path_does(synth_torch, bad_photos, tmp_path):
    """Truncated photos, a pixel bomb, an empty and a text file fail and are listed; a photo stored
    sideways (EXIF) and a PNG named .jpg are predicted: the same files as the plain path's."""
    photos = {path.name: path for path in bad_photos.values()}
    names = sorted(photos)
    for fast in (False, True):
        (tmp_path / str(fast)).mkdir()
        summary = run_prediction(synth_torch, photos, names + ["absent.jpg"],
                                 submission=tmp_path / str(fast) / "sub.csv", fast=fast)
        assert summary.predicted == 2 and len(summary.failures) == 5
        assert summary.missing == ["absent.jpg"] and not summary.complete
    for name in ("sub.csv", "sub.failures.csv"):
        assert (tmp_path / "True" / name).read_bytes() == (tmp_path / "False" / name).read_bytes()
