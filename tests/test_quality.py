"""Quality "best": flip TTA plus the outline refiner, which runs from its own ONNX file without
torch (`carmask export` of a refiner run), found for a shipped model in weights/models.json;
"fast", the default, runs neither."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TORCH_WORLD, run_without_torch
from typer.testing import CliRunner

from carmask.cli import app
from carmask.inference import model_files
from carmask.inference.model_files import SHIPPED, ModelFileError, model_id, read_config
from carmask.inference.predictor import Predictor
from carmask.inference.refine import RefinerGeometry, outline_band, shipped_refiner

SHIPPED_REFINER = model_files.WEIGHTS / "carvana-refiner-mnv2.onnx"
REFINER_NAME = "refiner-mnv2 (carvana-refiner-mnv2.onnx)"


def carmask(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", "NO_COLOR": "1"})


@pytest.fixture(scope="module")
def refiner_run(tmp_path_factory) -> Path:
    """A `carmask train-refiner` run folder whose refiner.safetensors is an untrained
    refiner-mnv2 made to act (it starts as the identity: its last layer is zero), recorded as
    trained on the shipped studio model's outlines."""
    from carmask.training.models import create_model
    from carmask.training.models.io import model_config, save_model

    torch.manual_seed(0)
    refiner = create_model("refiner-mnv2", pretrained=False).eval()
    torch.nn.init.normal_(refiner.head[2].weight, std=0.5)
    geometry = RefinerGeometry()
    run = tmp_path_factory.mktemp("refiner-run")
    save_model(refiner, run / "refiner.safetensors",
               model_config("refiner-mnv2", (geometry.tile,) * 2, geometry=geometry.as_dict(),
                            training={"coarse": model_id(SHIPPED["studio"])}))
    return run


@pytest.fixture(scope="module")
def refiner_onnx(refiner_run, tmp_path_factory) -> Path:
    """The run's refiner exported as the shipped one is: `carmask export --fp16`."""
    out = tmp_path_factory.mktemp("refiner-onnx") / "refiner.onnx"
    result = carmask("export", "--model", str(refiner_run), "--out", str(out), "--fp16")
    assert result.exit_code == 0, result.output
    assert f"the outline refiner of {model_id(SHIPPED['studio'])}" in result.output
    return out


@pytest.fixture
def release(refiner_onnx, tmp_path, monkeypatch) -> Path:
    """A weights folder as a release with the studio model's refiner would ship it: the model,
    its refiner named in models.json, each with its SHA-256."""
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(SHIPPED["studio"], weights / "carvana-unet-mnv2.onnx")
    shutil.copy(refiner_onnx, weights / "carvana-refiner-mnv2.onnx")

    def digest(name: str) -> dict:
        return {"onnx": hashlib.sha256((weights / name).read_bytes()).hexdigest()}
    (weights / "models.json").write_text(json.dumps({
        "carvana-unet-mnv2": {"refiner": "carvana-refiner-mnv2.onnx",
                              "sha256": digest("carvana-unet-mnv2.onnx")},
        "carvana-refiner-mnv2": {"sha256": digest("carvana-refiner-mnv2.onnx")}}))
    monkeypatch.setattr(model_files, "WEIGHTS", weights)
    return weights


def test_a_refiner_exports_alone_recording_what_it_refines(refiner_run, refiner_onnx, tmp_path):
    import onnx

    config = read_config(refiner_onnx)
    assert config["role"] == "refiner" and config["architecture"] == "refiner-mnv2"
    assert config["geometry"] == RefinerGeometry().as_dict() and config["input_size"] == [128, 128]
    assert config["refines"] == model_id(SHIPPED["studio"])
    weights = onnx.load(str(refiner_onnx)).graph.initializer
    assert {w.data_type for w in weights if len(w.dims) > 1} == {onnx.TensorProto.FLOAT16}
    # a refiner given as a model to mask photos with is refused, saying what it is
    with pytest.raises(ModelFileError, match="outline refiner"):
        Predictor(refiner_onnx)
    # what it refines: --refines overrides the training record; with neither, it must be said
    other = carmask("export", "--model", str(refiner_run / "refiner.safetensors"), "--out",
                    str(tmp_path / "g.onnx"), "--refines", "general")
    assert other.exit_code == 0 and read_config(tmp_path / "g.onnx")["refines"] == model_id(SHIPPED["general"])
    from carmask.training.models.io import load_model, save_model

    network, config = load_model(refiner_run / "refiner.safetensors")
    save_model(network, tmp_path / "anonymous.safetensors", dict(config, training={}))
    unnamed = carmask("export", "--model", str(tmp_path / "anonymous.safetensors"), "--out",
                      str(tmp_path / "a.onnx"))
    assert unnamed.exit_code == 1 and "--refines" in unnamed.stderr and not (tmp_path / "a.onnx").exists()
    coarse = carmask("export", "--out", str(tmp_path / "c.onnx"), "--refines", "studio")
    assert coarse.exit_code == 1 and "not an outline refiner" in coarse.stderr


# The script run with torch (and all of training) unimportable: the coarse logit of a photo and
# that logit refined by the refiner's ONNX file.
_REFINE_WITHOUT_TORCH = f"""
import sys
for name in {TORCH_WORLD!r}:
    sys.modules[name] = None
import numpy as np
from carmask.data.io import read_photo
from carmask.inference.outputs import upsample
from carmask.inference.predictor import Predictor
from carmask.inference.refine import OnnxRefiner

photo = read_photo(sys.argv[1]).pixels
coarse = Predictor("studio")
logit = upsample(coarse.raw_outputs(coarse.preprocess(photo)[None]), photo.shape[:2])[0, 0]
np.save(sys.argv[3], logit)
np.save(sys.argv[4], OnnxRefiner(sys.argv[2], threads=2)(photo, logit))
assert Predictor("studio", refiner=sys.argv[2], quality="best").refiner is not None
"""


def test_the_refiner_onnx_runs_without_torch_as_the_torch_refiner_does(refiner_run, refiner_onnx,
                                                                       held_out, tmp_path):
    from carmask.data.io import read_photo
    from carmask.inference.refine import MEAN, STD, refine_logit
    from carmask.training.models.io import attach_refiner, load_model
    from carmask.training.refiner import OutlineRefiner

    logit_file, refined_file = tmp_path / "logit.npy", tmp_path / "refined.npy"
    done = subprocess.run([sys.executable, "-c", _REFINE_WITHOUT_TORCH, str(held_out[0]),
                           str(refiner_onnx), str(logit_file), str(refined_file)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    photo, logit, refined = read_photo(held_out[0]).pixels, np.load(logit_file), np.load(refined_file)
    band = outline_band(logit > 0, RefinerGeometry().band)
    changed = refined != logit
    assert changed.sum() > 0.9 * band.sum() and not (changed & ~band).any()  # it acts, in the band only
    # torch's OutlineRefiner, attached in a combined file (which stores fp16 weights too): the
    # same weights, so only the order of the float32 arithmetic differs (measured: 6e-6)
    combined = attach_refiner(None, refiner_run / "refiner.safetensors", tmp_path / "combined.safetensors")
    by_torch = OutlineRefiner(read_config(combined)["refiner"], model_file=combined)(photo, logit)
    np.testing.assert_allclose(refined, by_torch, atol=1e-4, rtol=0)
    # against the trained float32 weights, fp16's rounding moves the refined logits by up to
    # 0.0033 here (this refiner's head is large), which flips 2 of the band's 37,680 pixels
    network = load_model(refiner_run / "refiner.safetensors")[0]

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return network(torch.from_numpy(batch)).numpy()
    in_fp32 = refine_logit(photo, logit, run, RefinerGeometry(), MEAN, STD)
    np.testing.assert_allclose(refined, in_fp32, atol=0.02, rtol=0)
    assert ((refined > 0) != (in_fp32 > 0)).sum() < 1e-3 * band.sum()


def test_a_shipped_model_finds_its_refiner_in_models_json(release, caplog):
    studio = release / "carvana-unet-mnv2.onnx"
    best = Predictor(studio, quality="best")
    assert best.tta and best.refiner is not None and best.refiner.name == REFINER_NAME
    assert "refiner-mnv2" in best.name
    fast = Predictor(studio)
    assert not fast.tta and fast.refiner is None
    assert Predictor(studio, quality="best", tta=False).refiner is not None  # `tta` overrides
    # the refiner is checked as every shipped file is
    entries = json.loads((release / "models.json").read_text())
    del entries["carvana-refiner-mnv2"]
    (release / "models.json").write_text(json.dumps(entries))
    with pytest.raises(ModelFileError, match="records no SHA-256"):
        Predictor(studio, quality="best")
    entries["carvana-refiner-mnv2"] = {"sha256": {"onnx": "0" * 64}}
    (release / "models.json").write_text(json.dumps(entries))
    with pytest.raises(ModelFileError, match="carvana-refiner-mnv2.onnx: checksum mismatch"):
        Predictor(studio, quality="best")
    # a release without it: best is flip TTA alone, and the log says so
    (release / "carvana-refiner-mnv2.onnx").unlink()
    with caplog.at_level(logging.WARNING):
        alone = Predictor(studio, quality="best")
    assert alone.tta and alone.refiner is None
    assert "carvana-refiner-mnv2.onnx is not in this install; running flip TTA only" in caplog.text


def test_quality_best_runs_the_larger_model_a_shipped_model_names(release, monkeypatch, caplog):
    """A shipped model's entry may name a larger-input file of the same role ("best"): quality
    best runs it with the refiner its own entry names (no warning that the refiner was trained
    on another model's outlines: the release pairs them), fast never does, and `carmask models`
    lists it after the model."""
    studio = release / "carvana-unet-mnv2.onnx"
    larger = release / "carvana-unet-mnv2-large.onnx"
    shutil.copy(studio, larger)
    entries = json.loads((release / "models.json").read_text())
    entries["carvana-unet-mnv2"]["best"] = larger.name
    entries[larger.stem] = {"role": "studio (--quality best)", "input": "1024x1536",
                            "refiner": "carvana-refiner-mnv2.onnx",
                            "sha256": {"onnx": hashlib.sha256(larger.read_bytes()).hexdigest()}}
    (release / "models.json").write_text(json.dumps(entries))
    with caplog.at_level(logging.WARNING):
        best = Predictor(studio, quality="best")
    assert best.path == larger and best.refiner is not None and best.tta
    assert "carvana-unet-mnv2-large.onnx" in best.name and not caplog.text
    assert Predictor(studio).path == studio and Predictor(larger).path == larger
    monkeypatch.setitem(SHIPPED, "studio", studio)
    monkeypatch.setitem(SHIPPED, "general", release / "general-unet-mnv2.onnx")
    listed = [(m.role, m.path.name) for m in model_files.shipped_models()]
    assert listed[:2] == [("studio", studio.name), ("studio (--quality best)", larger.name)], listed
    assert listed.count(("refiner", "carvana-refiner-mnv2.onnx")) == 1  # named twice, listed once
    # the file is checked as every shipped file is: its release must record its SHA-256, and a
    # release without the file runs the model
    recorded = entries[larger.stem].pop("sha256")
    (release / "models.json").write_text(json.dumps(entries))
    with pytest.raises(ModelFileError, match="as a shipped --quality best model but records no SHA-256"):
        Predictor(studio, quality="best")
    entries[larger.stem]["sha256"] = recorded
    entries[larger.stem]["sha256"]["onnx"] = "0" * 64
    (release / "models.json").write_text(json.dumps(entries))
    with pytest.raises(ModelFileError, match="carvana-unet-mnv2-large.onnx: checksum mismatch"):
        Predictor(studio, quality="best")
    larger.unlink()
    with caplog.at_level(logging.WARNING):
        alone = Predictor(studio, quality="best")
    assert alone.path == studio and alone.refiner is not None
    assert "its --quality best model carvana-unet-mnv2-large.onnx is not in this install" in caplog.text


def test_quality_best_without_the_refiner_file_is_flip_tta_on_both_models(caplog):
    from carmask.inference.route import create_predictor

    with pytest.raises(ValueError, match="quality must be fast or best"):
        Predictor(quality="good")
    with caplog.at_level(logging.INFO):
        auto = create_predictor(quality="best")
    assert auto.studio.tta and auto.general.tta and auto.general.refiner is None
    if not SHIPPED_REFINER.is_file():
        warnings = [r.getMessage() for r in caplog.records
                    if r.levelno == logging.WARNING and r.name.startswith("carmask")]
        assert warnings == ["carvana-unet-mnv2.onnx: its outline refiner carvana-refiner-mnv2.onnx "
                            "is not in this install; running flip TTA only"]
    assert "general-unet-mnv2.onnx has no outline refiner" in caplog.text  # only at INFO


def test_quality_on_the_command_line(release, held_out, carvana, tmp_path):
    """predict names the refiner and the flip TTA with --quality best, neither with fast (the
    default); evaluate says which quality ran, in its output, its JSON and its report."""
    studio = str(release / "carvana-unet-mnv2.onnx")
    masks = {}
    for quality in ("best", "fast"):
        result = carmask("predict", str(held_out[0]), "--model", studio, "--quality", quality,
                         "--masks-dir", str(tmp_path / quality))
        assert result.exit_code == 0, result.output
        header = next(line for line in result.stderr.splitlines() if line.startswith("predicting"))
        assert f"quality {quality}" in header
        assert "refiner-mnv2" in header and "+ flip TTA" in header if quality == "best" else \
            "refiner" not in header and "TTA" not in header, header
        masks[quality] = (tmp_path / quality / f"{held_out[0].stem}_mask.png").read_bytes()
    assert masks["best"] != masks["fast"]
    folder = tmp_path / "kaggle"
    for sub in ("train", "train_masks", "test"):
        (folder / sub).mkdir(parents=True)
    (folder / "train" / held_out[0].name).symlink_to(held_out[0])
    (folder / "train_masks" / held_out[1].name).symlink_to(held_out[1])
    shutil.copy(carvana / "metadata.csv", folder / "metadata.csv")
    scored = carmask("evaluate", "--data", str(folder), "--model", studio, "--quality", "best",
                     "--json", "--out", str(tmp_path / "report"))
    assert scored.exit_code == 0, scored.output
    figures = json.loads(scored.stdout.strip().splitlines()[-1])
    assert figures["quality"] == {"quality": "best", "tta": True, "refiner": REFINER_NAME}
    report = (tmp_path / "report" / "index.html").read_text()
    assert f"flip TTA + outline refiner {REFINER_NAME}" in report
    printed = carmask("evaluate", "--data", str(folder), "--model", studio)
    assert printed.exit_code == 0 and "quality fast: no TTA" in printed.stdout, printed.output


def test_quality_best_runs_without_torch(carvana, tmp_path):
    """The plain install: --quality best on a studio photo runs flip TTA on the file the shipped
    studio model names for it (weights/models.json "best"), with that file's refiner if any."""
    photo = sorted((carvana / "test").glob("*.jpg"))[0]
    result = run_without_torch("predict", str(photo), "--quality", "best", "--masks-dir",
                               str(tmp_path / "masks"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "+ flip TTA" in result.stderr and "quality best" in result.stderr
    best = model_files.shipped_best(SHIPPED["studio"])
    runs = best if best is not None and best.is_file() else SHIPPED["studio"]
    assert f"({runs.name}" in result.stderr, result.stderr
    assert ("refiner-mnv2" in result.stderr) == (shipped_refiner(runs) is not None), result.stderr


def test_quality_best_scores_higher_on_held_out_cars(carvana):
    """A few photos of the studio model's validation cars: best (flip TTA on the file the
    studio model's entry names for it) against the default."""
    from carmask.apps.evaluate import dice_and_iou
    from carmask.data.io import read_mask
    from carmask.data.layout import index_dataset
    from carmask.data.split import recorded_validation

    training = read_config(SHIPPED["studio"])["training"]
    records = [r for r in index_dataset(carvana, check_pixels=False).train if r.mask_path]
    validation = recorded_validation(records, training)
    picks = validation[::max(1, len(validation) // 6)][:6]  # several cars and views
    scores = {}
    for quality in ("fast", "best"):
        predictor = Predictor("studio", quality=quality)
        predictions = predictor.predict_paths([r.image_path for r in picks])
        scores[quality] = [dice_and_iou(p.mask, read_mask(r.mask_path))[0]
                           for r, p in zip(picks, predictions)]
    assert np.mean(scores["best"]) > np.mean(scores["fast"]), scores
