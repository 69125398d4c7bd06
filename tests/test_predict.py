"""Prediction at scale: streaming submissions, kill + resume, shards + merge, bad photos, ONNX,
and the evaluator's Dice against an independent computation."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from carmask.data.io import read_mask
from carmask.data.layout import index_dataset
from carmask.apps.evaluate import dice_and_iou, evaluate
from carmask.inference.predictor import Predictor
from carmask.kaggle.submission import check_submission, read_sample_names


def carmask(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "carmask", *args], capture_output=True, text=True,
                          **kwargs)


@pytest.fixture(scope="module")
def model(synth_run):
    return synth_run[0] / "model.safetensors"


@pytest.fixture(scope="module")
def test_folder(synth_data, tmp_path_factory):
    """The synthetic folder's test photos, twice over under new names (64 photos), so a run
    lasts long enough to be killed half-way."""
    root = tmp_path_factory.mktemp("predict") / "data"
    (root / "test").mkdir(parents=True)
    photos = sorted((synth_data / "test").glob("*.jpg"))
    names = []
    for copy in range(4):
        for photo in photos:
            name = f"{copy:x}{photo.name[1:]}"
            shutil.copy(photo, root / "test" / name)
            names.append(name)
    (root / "sample_submission.csv").write_text("img,rle_mask\n" + "".join(f"{n},1 1\n" for n in sorted(names)))
    return root


def test_submission_masks_match_the_predictor(model, test_folder, tmp_path):
    out = tmp_path / "sub.csv"
    result = carmask("predict", "--data", str(test_folder), "--model", str(model), "--out", str(out),
                     "--masks-dir", str(tmp_path / "masks"))
    assert result.returncode == 0, result.stderr
    names = read_sample_names(test_folder / "sample_submission.csv")
    assert check_submission(out, names, shape=(128, 192)).ok
    predictor = Predictor(model)
    photo = test_folder / "test" / names[3]
    expected = predictor.predict_paths([photo]).__next__().mask
    assert np.array_equal(read_mask(tmp_path / "masks" / names[3].replace(".jpg", "_mask.png")), expected)
    from carmask.kaggle import rle
    row = out.read_text().splitlines()[4].split(",")
    assert row[0] == names[3] and np.array_equal(rle.decode(row[1], (128, 192)), expected)


def test_killed_run_resumes_without_predicting_twice(model, test_folder, tmp_path):
    reference, killed = tmp_path / "reference.csv", tmp_path / "killed.csv"
    args = ["--data", str(test_folder), "--model", str(model), "--batch", "1", "--workers", "1"]
    assert carmask("predict", *args, "--out", str(reference)).returncode == 0
    process = subprocess.Popen([sys.executable, "-m", "carmask", "predict", *args, "--out", str(killed)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    spool = tmp_path / "killed.csv.spool"
    deadline = time.time() + 120
    while time.time() < deadline and (not spool.exists() or spool.read_bytes().count(b"\n") < 10):
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = spool.read_bytes().count(b"\n")
    assert not killed.exists() and 10 <= done < 64
    resumed = carmask("predict", *args, "--out", str(killed), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{64 - done} predicted ({done} already done, {64 - done} by the studio model)" in resumed.stdout
    assert killed.read_bytes() == reference.read_bytes()


def test_shards_merge_into_the_single_run(model, test_folder, tmp_path):
    single = tmp_path / "single.csv"
    assert carmask("predict", "--data", str(test_folder), "--model", str(model), "--out", str(single)).returncode == 0
    shards = []
    for index in range(3):
        shard = tmp_path / f"shard{index}.csv"
        result = carmask("predict", "--data", str(test_folder), "--model", str(model), "--out", str(shard),
                         "--shard", f"{index}/3")
        assert result.returncode == 0, result.stderr
        shards.append(str(shard))
    merged = tmp_path / "merged.csv"
    result = carmask("submission", "merge", *shards, "--sample", str(test_folder / "sample_submission.csv"),
                     "--out", str(merged), "--shape", "128x192")
    assert result.returncode == 0, result.stderr
    assert merged.read_bytes() == single.read_bytes()
    overlap = carmask("submission", "merge", shards[0], shards[0], "--sample",
                      str(test_folder / "sample_submission.csv"), "--out", str(tmp_path / "x.csv"))
    assert overlap.returncode == 1 and "is also in" in overlap.stderr


def test_a_corrupt_photo_is_listed_and_the_run_goes_on(model, test_folder, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(test_folder, data)
    bad = sorted((data / "test").glob("*.jpg"))[5]
    bad.write_bytes(b"\xff\xd8 definitely not the rest of a JPEG")
    out = tmp_path / "sub.csv"
    result = carmask("predict", "--data", str(data), "--model", str(model), "--out", str(out))
    assert result.returncode == 3, result.stderr
    assert "incomplete: 1 failed" in result.stderr
    failures = (tmp_path / "sub.failures.csv").read_text().splitlines()
    assert failures[0] == "img,error" and failures[1].startswith(f"{bad.name},") and bad.name in failures[1]
    report = check_submission(out, read_sample_names(data / "sample_submission.csv"), shape=(128, 192))
    assert report.ok and report.empty_masks == 1


def test_onnx_masks_agree_with_torch(model, test_folder):
    photos = sorted((test_folder / "test").glob("*.jpg"))[:16]
    torch_masks = [p.mask for p in Predictor(model).predict_paths(photos)]
    onnx_masks = [p.mask for p in Predictor(model, backend="onnx").predict_paths(photos)]
    for a, b in zip(torch_masks, onnx_masks):
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.999


def test_flip_tta_changes_little_and_stays_binary(model, test_folder):
    photos = sorted((test_folder / "test").glob("*.jpg"))[:4]
    plain = [p.mask for p in Predictor(model).predict_paths(photos)]
    tta = [p.mask for p in Predictor(model, tta=True).predict_paths(photos)]
    for a, b in zip(plain, tta):
        assert b.dtype == bool and 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.95


def test_evaluate_dice_equals_an_independent_numpy_dice(model, synth_data, tmp_path):
    records = index_dataset(synth_data, check_pixels=False).train[:12]
    predictor = Predictor(model)
    evaluation = evaluate(predictor, records, tmp_path / "eval")
    independent = []
    for record in records:
        prediction = predictor.predict_paths([record.image_path]).__next__().mask
        truth = np.asarray(read_mask(record.mask_path))
        independent.append(2.0 * np.logical_and(prediction, truth).sum() / (prediction.sum() + truth.sum()))
    assert evaluation.dice == pytest.approx(np.mean(independent), abs=1e-12)
    html = (tmp_path / "eval" / "index.html").read_text()
    assert "The 12 worst images" in html and html.count("data:image/jpeg") >= 12
    # the outline section counts every wrong pixel once, split into false and missed car
    assert "Along the outline" in html and html.count("data:image/png") >= 12
    assert evaluation.outline.wrong == evaluation.per_image["wrong_pixels"].sum() > 0
    assert evaluation.outline.images == len(records)
    assert len((tmp_path / "eval" / "per_image.csv").read_text().splitlines()) == 13


def test_evaluate_cli_json(model, synth_data):
    result = carmask("evaluate", "--data", str(synth_data), "--model", str(model), "--cars", "val", "--json")
    assert result.returncode == 0, result.stderr
    import json
    scores = json.loads(result.stdout)
    assert scores["images"] == 32 and 0.5 < scores["dice"] <= 1 and scores["iou"] < scores["dice"]


def test_export_onnx_fp16_is_half_the_size(model, tmp_path):
    full, half = tmp_path / "m.onnx", tmp_path / "m16.onnx"
    assert carmask("export", "--model", str(model), "--out", str(full)).returncode == 0
    assert carmask("export", "--model", str(model), "--out", str(half), "--fp16").returncode == 0
    assert half.stat().st_size < 0.6 * full.stat().st_size


def test_predict_needs_an_input_and_an_output(tmp_path):
    nothing = carmask("predict", "--data", str(tmp_path))
    assert nothing.returncode == 1 and "nothing to write" in nothing.stderr
    nophoto = carmask("predict", "--images", "x.jpg", "--out", str(tmp_path / "s.csv"))
    assert nophoto.returncode == 1 and "x.jpg: no such file, folder or glob" in nophoto.stderr
    photo = tmp_path / "x.jpg"
    photo.write_bytes(b"")
    missing = carmask("predict", str(photo), "--model", str(tmp_path / "none.safetensors"),
                      "--out", str(tmp_path / "s.csv"))
    assert missing.returncode == 1 and "none.safetensors: no such model file" in missing.stderr


# -- photos as a viewer shows them, and photos that are not what they seem -----------------------
@pytest.mark.parametrize("orientation", range(1, 9))
def test_read_photo_shows_every_exif_orientation_as_pillow_does(carvana, held_out, orientation):
    import io

    from PIL import Image, ImageOps

    from carmask.data.io import read_photo
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.open(held_out[0]).resize((96, 64)).save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    shown = np.asarray(ImageOps.exif_transpose(Image.open(buffer)).convert("RGB"))
    photo = read_photo(buffer.getvalue(), name="upload.jpg")
    assert photo.size == shown.shape[:2] and np.array_equal(photo.pixels, shown)
    reduced = read_photo(buffer.getvalue(), reduce=2)
    half = (shown.shape[0] // 2, shown.shape[1] // 2)
    assert reduced.size == shown.shape[:2] and reduced.pixels.shape[:2] == half


def test_bad_photos_are_listed_with_what_they_are_and_the_good_ones_predicted(
        shipped_predictor, bad_photos, held_out, tmp_path):
    """The job of `predict --out --masks-dir`: a sideways-stored (EXIF) photo gets its mask as
    displayed; truncated photos, a pixel bomb, an empty and a text file are failures that say
    what they are; a PNG named .jpg is simply read; nothing is left behind."""
    from carmask.inference.job import run_prediction

    truth = read_mask(held_out[1])
    names = ["half.jpg", "bomb.png", "sideways.jpg", "half_with_end.jpg", "empty.jpg", "notes.jpg",
             "png_inside.jpg"]
    photos = {path.name: path for path in bad_photos.values()}
    out = tmp_path / "job" / "sub.csv"
    out.parent.mkdir()
    summary = run_prediction(shipped_predictor, photos, names, submission=out,
                             masks_dir=tmp_path / "job" / "masks")
    failures = dict(summary.failures)
    assert sorted(failures) == ["bomb.png", "empty.jpg", "half.jpg", "half_with_end.jpg", "notes.jpg"]
    for name, problem in failures.items():
        assert name in problem  # the file is named
    assert "truncated" in failures["half.jpg"] and "truncated" in failures["half_with_end.jpg"]
    assert "30000x30000" in failures["bomb.png"] and "refused before decoding" in failures["bomb.png"]
    assert "empty file (0 bytes)" in failures["empty.jpg"]
    assert "not an image (it looks like text" in failures["notes.jpg"]
    listed = (tmp_path / "job" / "sub.failures.csv").read_text()
    assert all(name in listed for name in failures)
    assert summary.predicted == 2 and not summary.complete
    masks = tmp_path / "job" / "masks"
    assert sorted(p.name for p in masks.iterdir()) == ["png_inside_mask.png", "sideways_mask.png"]
    sideways = read_mask(masks / "sideways_mask.png")
    assert sideways.shape == truth.shape  # the displayed 1918x1280, not the stored 1280x1918
    assert dice_and_iou(sideways, truth)[0] > 0.98
    assert dice_and_iou(read_mask(masks / "png_inside_mask.png"), truth)[0] > 0.98
    # a crash used to leave an empty spool; the rows kept for --resume are not empty
    assert all(p.stat().st_size for p in out.parent.iterdir() if p.is_file())


def test_cli_lists_truncated_photos_and_bombs_and_exits_3(model, test_folder, tmp_path):
    from conftest import bomb_png
    data = tmp_path / "data"
    shutil.copytree(test_folder, data)
    photos = sorted((data / "test").glob("*.jpg"))
    whole = photos[0].read_bytes()
    photos[0].write_bytes(whole[: len(whole) // 2])  # decoders would fill the rest with grey
    photos[1].write_bytes(whole[: len(whole) // 2] + b"\xff\xd9")
    photos[2].write_bytes(bomb_png())
    out = tmp_path / "out" / "sub.csv"
    out.parent.mkdir()
    result = carmask("predict", "--data", str(data), "--model", str(model), "--out", str(out))
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr and "incomplete: 3 failed" in result.stderr
    listed = (out.parent / "sub.failures.csv").read_text().splitlines()[1:]
    failures = dict(line.split(",", 1) for line in listed)
    assert sorted(failures) == sorted(p.name for p in photos[:3])
    assert all(p.stat().st_size for p in out.parent.iterdir())  # no empty spool from a crash
    report = check_submission(out, read_sample_names(data / "sample_submission.csv"), shape=(128, 192))
    assert report.ok and report.empty_masks == 3


# -- outputs: refused before the model loads, locked while written, kept when interrupted -------
def test_outputs_of_the_wrong_kind_are_refused_before_the_model_loads(test_folder, tmp_path):
    """A missing model file would be reported first if the model were loaded first."""
    photo = str(sorted((test_folder / "test").glob("*.jpg"))[0])
    afile = tmp_path / "notes.txt"
    afile.write_text("keep me\n")
    nomodel = ("--model", str(tmp_path / "none.safetensors"))
    cases = {
        ("--out", str(afile)): f"{afile} exists; --overwrite replaces it",
        ("--out", str(tmp_path)): "the --out submission is a folder",
        ("--out", str(afile / "sub.csv")): f"{afile} is a file, not a folder",
        ("--masks-dir", str(afile)): "the --masks-dir is a file, not a folder",
        ("--masks-dir", str(afile / "masks")): f"{afile} is a file, not a folder",
        ("--out", str(afile), "--resume"): "not a submission (it starts with b'keep me\\n'",
    }
    for args, message in cases.items():
        result = carmask("predict", photo, *args, *nomodel)
        assert result.returncode == 1 and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert afile.read_text() == "keep me\n"


def test_existing_out_is_replaced_only_with_overwrite(model, test_folder, tmp_path):
    photos = [str(p) for p in sorted((test_folder / "test").glob("*.jpg"))[:2]]
    out = tmp_path / "sub.csv"
    out.write_text("my notes\n")
    refused = carmask("predict", *photos, "--model", str(model), "--out", str(out))
    assert refused.returncode == 1 and "--overwrite replaces it" in refused.stderr
    assert out.read_text() == "my notes\n"
    replaced = carmask("predict", *photos, "--model", str(model), "--out", str(out), "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert check_submission(out, [p.rsplit("/", 1)[1] for p in photos], shape=(128, 192)).ok


def test_resume_redoes_invalid_rows_and_says_which(model, test_folder, tmp_path):
    args = ["--data", str(test_folder), "--model", str(model)]
    reference, out = tmp_path / "reference.csv", tmp_path / "sub.csv"
    assert carmask("predict", *args, "--out", str(reference)).returncode == 0
    lines = reference.read_text().splitlines(keepends=True)
    name3, name5, name7 = (lines[i].split(",")[0] for i in (3, 5, 7))
    lines[3] = f"{name3},5 0\n"  # a zero length
    lines[5] = f"{name5},9 2 3 1\n"  # unsorted runs
    lines[7] = f"{name7},24570 10\n"  # past the end of its 128x192 photo
    out.write_text("".join(lines))
    resumed = carmask("predict", *args, "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "3 predicted (61 already done, 3 by the studio model)" in resumed.stdout
    assert f"redone: {out}:4: {name3}: invalid RLE" in resumed.stderr
    assert f"redone: {out}:6: {name5}: invalid RLE" in resumed.stderr
    assert f"redone: {out}:8: {name7}: invalid RLE: pair 1: run 24570+10 ends at pixel" in resumed.stderr
    assert out.read_bytes() == reference.read_bytes()


def test_a_second_run_on_the_same_out_is_refused_naming_the_first(model, test_folder, tmp_path):
    data = tmp_path / "data"
    (data / "test").mkdir(parents=True)
    names = []
    for copy in range(2):  # 128 photos at a larger input than the model's: a run of ~30 s
        for photo in sorted((test_folder / "test").glob("*.jpg")):
            names.append(f"{copy}{photo.name}")
            (data / "test" / names[-1]).symlink_to(photo)
    (data / "sample_submission.csv").write_text("img,rle_mask\n" + "".join(f"{n},\n" for n in names))
    args = ["--data", str(data), "--model", str(model), "--size", "512x768", "--workers", "1"]
    out = tmp_path / "sub.csv"
    first = subprocess.Popen([sys.executable, "-m", "carmask", "predict", *args, "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seconds: list[subprocess.Popen] = []
    try:
        spool = tmp_path / "sub.csv.spool"
        deadline = time.time() + 120
        while time.time() < deadline and (not spool.exists() or spool.read_bytes().count(b"\n") < 2):
            assert first.poll() is None, first.communicate()
            time.sleep(0.02)
        seconds = [subprocess.Popen([sys.executable, "-m", "carmask", "predict", *args, "--out",
                                     str(out), *extra], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
                   for extra in ([], ["--resume"], ["--overwrite"])]
        for second in seconds:
            _, stderr = second.communicate(timeout=120)
            assert second.returncode == 1, stderr
            assert f"{out} is being written by another carmask process (pid {first.pid}" in stderr
        assert first.poll() is None  # still running: the refusals were not about a finished file
        _, stderr = first.communicate(timeout=600)
    finally:
        for process in (first, *seconds):
            if process.poll() is None:
                process.kill()
                process.wait()
    assert first.returncode == 0, stderr
    assert check_submission(out, names, shape=(128, 192)).ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "sub.csv"]  # no lock left


def test_ctrl_c_says_how_to_resume_and_that_command_finishes_the_job(model, test_folder, tmp_path):
    import shlex
    # a larger input than the model's makes the run last long enough to be caught in the act
    args = ["--data", str(test_folder), "--model", str(model), "--size", "512x768", "--workers", "1"]
    out = tmp_path / "sub.csv"
    # Ctrl-C as a terminal delivers it, to a child with the default SIGINT. A suite started in
    # the background (`make test &` from a script) runs with SIGINT ignored, as POSIX shells
    # start background jobs; a child inherits that, Python never raises KeyboardInterrupt, and
    # the run went on to finish with exit 0
    process = subprocess.Popen([sys.executable, "-m", "carmask", "predict", *args, "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    spool = tmp_path / "sub.csv.spool"
    deadline = time.time() + 120
    while time.time() < deadline and (not spool.exists() or spool.read_bytes().count(b"\n") < 5):
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted: what was done is kept" in stderr
    command = shlex.split(stderr.split("to continue, run: ", 1)[1].strip())
    assert command[:2] == ["carmask", "predict"] and command[-1] == "--resume"
    resumed = carmask(*command[1:])
    assert resumed.returncode == 0, resumed.stderr
    done = int(resumed.stdout.split("(", 1)[1].split()[0])
    assert 5 <= done < 64 and f"{64 - done} predicted ({done} already done, {64 - done} by the studio model)" in resumed.stdout
    assert check_submission(out, read_sample_names(test_folder / "sample_submission.csv"),
                            shape=(128, 192)).ok


# -- inputs and options ------------------------------------------------------------------------
def test_photos_as_the_shell_expands_a_glob_positional_or_after_images(model, test_folder, tmp_path):
    photos = [str(p) for p in sorted((test_folder / "test").glob("*.jpg"))[:3]]
    names = [p.rsplit("/", 1)[1] for p in photos]
    for how, args in {"positional": photos, "images": ["--images", *photos],
                      "glob": [str(test_folder / "test" / f"{names[0][:12]}_0[1-3].jpg")]}.items():
        out = tmp_path / f"{how}.csv"
        result = carmask("predict", *args, "--model", str(model), "--out", str(out))
        assert result.returncode == 0, (how, result.stderr)
        assert check_submission(out, names, shape=(128, 192)).ok, how
        assert "(onnx, cpu, batch 1)" in result.stderr  # backend auto: onnxruntime on the CPU


def test_two_photos_with_one_name_are_refused_naming_both(test_folder, tmp_path):
    photo = sorted((test_folder / "test").glob("*.jpg"))[0]
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(photo, tmp_path / folder / photo.name)
    result = carmask("predict", str(tmp_path / "a"), str(tmp_path / "b" / "*.jpg"),
                     "--out", str(tmp_path / "sub.csv"))
    assert result.returncode == 1
    assert (f"two photos are named {photo.name}: {tmp_path / 'a' / photo.name} and "
            f"{tmp_path / 'b' / photo.name}") in result.stderr
    same_stem = tmp_path / "a" / (photo.stem + ".png")
    shutil.copy(photo, same_stem)
    masks = carmask("predict", str(tmp_path / "a"), "--masks-dir", str(tmp_path / "masks"))
    assert masks.returncode == 1 and "would both get the mask" in masks.stderr


@pytest.mark.parametrize("command", ["predict", "cutout"])
@pytest.mark.parametrize("batch", ["0", "-1"])
def test_batch_below_one_is_refused(command, batch, test_folder, tmp_path):
    photo = str(sorted((test_folder / "test").glob("*.jpg"))[0])
    result = carmask(command, photo, "--out", str(tmp_path / "out.csv"), "--batch", batch)
    assert result.returncode == 2 and "--batch" in result.stderr


def test_backend_auto_is_onnx_on_the_cpu_and_torch_on_a_gpu(model):
    from carmask.inference.predictor import default_batch, resolve_backend
    assert Predictor(model).backend == "onnx" and Predictor(model).batch == 1
    assert resolve_backend("auto", "cuda") == "torch" and resolve_backend("auto", "cpu") == "onnx"
    assert default_batch("torch") == 4 and Predictor(model, backend="torch").batch == 4
    for bad in ({"backend": "tensorrt"}, {"batch": 0}, {"device": "gpu"}):
        with pytest.raises(ValueError):
            Predictor(model, **bad)
