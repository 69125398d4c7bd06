import csv
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from carmask.kaggle import rle, writer as submission_writer
from carmask.data.io import read_mask
from carmask.kaggle.submission import (SubmissionError, check_submission, merge_submissions,
                                read_sample_names)
from carmask.kaggle.writer import SubmissionWriter, write_submission

SHAPE = (1280, 1918)


@pytest.fixture(scope="module")
def real_masks(carvana) -> dict[str, np.ndarray]:
    paths = sorted((carvana / "train_masks").glob("*_mask.gif"))[:24]
    return {p.name.replace("_mask.gif", ".jpg"): read_mask(p) for p in paths}


@pytest.fixture
def valid_csv(real_masks, tmp_path) -> Path:
    return write_submission(tmp_path / "valid.csv", list(real_masks), real_masks.items())


def csv_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_writer_output_is_in_sample_order_and_decodes_to_the_masks(real_masks, tmp_path):
    names = list(real_masks)
    shuffled = random.Random(0).sample(names, len(names))
    path = write_submission(tmp_path / "s.csv", names, ((n, real_masks[n]) for n in shuffled))
    lines = csv_lines(path)
    assert lines[0] == "img,rle_mask"
    assert [line.split(",")[0] for line in lines[1:]] == names
    for line in lines[1:]:
        name, encoding = line.split(",")
        assert np.array_equal(rle.decode(encoding, SHAPE), real_masks[name])
    assert not (tmp_path / "s.csv.spool").exists() and not list(tmp_path.glob(".s.csv.*"))
    assert check_submission(path, names).ok


def test_an_atomic_write_that_fails_keeps_the_old_file_and_leaves_nothing_behind(tmp_path):
    from carmask.util.atomic import atomic_path, write_bytes

    path = write_bytes(tmp_path / "out" / "masks.csv", b"old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_bytes(b"half of the new")
        raise RuntimeError("the job died")
    assert path.read_bytes() == b"old" and sorted(p.name for p in path.parent.iterdir()) == ["masks.csv"]
    with atomic_path(path) as tmp:
        assert tmp.parent == path.parent and not tmp.exists()
        tmp.write_bytes(b"new")
        assert path.read_bytes() == b"old"  # readers see the old file until the block ends
    assert path.read_bytes() == b"new" and sorted(p.name for p in path.parent.iterdir()) == ["masks.csv"]


def test_many_producers_bounded_memory(real_masks, tmp_path, monkeypatch):
    in_flight, peak, lock = 0, 0, threading.Lock()
    real_encode = rle.encode

    def slow_encode(mask):
        nonlocal in_flight
        time.sleep(0.005)
        result = real_encode(mask)
        with lock:
            in_flight -= 1
        return result

    class Counting(SubmissionWriter):
        def add(self, name, mask):
            super().add(name, mask)
            nonlocal in_flight, peak
            with lock:
                in_flight += 1
                peak = max(peak, in_flight)

    monkeypatch.setattr(submission_writer.rle, "encode", slow_encode)
    names = [f"{i:012x}_01.jpg" for i in range(120)]
    masks = list(real_masks.values())
    with Counting(tmp_path / "s.csv", names, workers=2, max_pending=4) as writer:
        def produce(part):
            for i, name in enumerate(part):
                writer.add(name, masks[i % len(masks)])
        threads = [threading.Thread(target=produce, args=(names[k::3],)) for k in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert peak <= 4 + 3  # the bound, plus one add per producer thread racing the counter
    assert [line.split(",")[0] for line in csv_lines(tmp_path / "s.csv")[1:]] == names


def test_unknown_or_repeated_names_are_refused(real_masks, tmp_path):
    names = list(real_masks)[:2]
    writer = SubmissionWriter(tmp_path / "s.csv", names)
    writer.add(names[0], real_masks[names[0]])
    with pytest.raises(SubmissionError, match="added twice"):
        writer.add(names[0], real_masks[names[0]])
    with pytest.raises(SubmissionError, match="not an image of this submission"):
        writer.add("ffffffffffff_01.jpg", real_masks[names[0]])
    with pytest.raises(SubmissionError, match="1 of 2 images have no mask yet"):
        writer.finalize()
    assert (tmp_path / "s.csv.spool").exists() and not (tmp_path / "s.csv").exists()


def test_allow_missing_writes_empty_rows_and_reports_them(real_masks, tmp_path):
    names = list(real_masks)[:3]
    writer = SubmissionWriter(tmp_path / "s.csv", names)
    writer.add(names[1], real_masks[names[1]])
    assert writer.finalize(allow_missing=True) == [names[0], names[2]]
    assert csv_lines(tmp_path / "s.csv")[1] == f"{names[0]},"


PRODUCER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from carmask.kaggle.submission import read_sample_names
    from carmask.kaggle.writer import SubmissionWriter
    out, n = sys.argv[1], int(sys.argv[2])
    names = [f"{i:012x}_01.jpg" for i in range(n)]
    with SubmissionWriter(out, names, workers=1, resume=True) as writer:
        for name in writer.remaining:
            number = int(name[:12], 16)  # the mask depends on the image only, as a model's would
            mask = np.zeros((64, 96), bool)
            mask[number % 64, : number % 90 + 1] = True
            writer.add(name, mask)
            time.sleep(0.02)
""")


def test_killed_run_resumes_to_the_same_file(tmp_path):
    script = tmp_path / "producer.py"
    script.write_text(PRODUCER)
    reference, killed = tmp_path / "reference.csv", tmp_path / "killed.csv"
    subprocess.run([sys.executable, str(script), str(reference), "200"], check=True)
    process = subprocess.Popen([sys.executable, str(script), str(killed), "200"])
    spool = Path(str(killed) + ".spool")
    deadline = time.time() + 60
    while time.time() < deadline and (not spool.exists() or spool.read_bytes().count(b"\n") < 40):
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not killed.exists()
    done_before = spool.read_bytes().count(b"\n")
    assert 40 <= done_before < 200
    with open(spool, "ab") as file:
        file.write(b"000000000fff_01.jpg,1 2 3")  # a row cut short by the kill
    names = [f"{i:012x}_01.jpg" for i in range(200)]
    writer = SubmissionWriter(killed, names, resume=True)
    assert len(writer.done) == done_before and len(writer.remaining) == 200 - done_before
    writer.close()
    subprocess.run([sys.executable, str(script), str(killed), "200"], check=True)
    assert killed.read_bytes() == reference.read_bytes()


def test_resume_of_a_finished_file_has_nothing_left(valid_csv, real_masks):
    writer = SubmissionWriter(valid_csv, list(real_masks), resume=True)
    assert writer.remaining == []
    before = valid_csv.read_bytes()
    writer.finalize()
    assert valid_csv.read_bytes() == before


def test_true_mask_submission_passes_the_check(valid_csv, real_masks):
    report = check_submission(valid_csv, list(real_masks))
    assert report.ok and report.rows == len(real_masks) and report.empty_masks == 0


def corrupt(lines: list[str], kind: str) -> tuple[list[str], int | None, str]:
    """Apply one corruption; return the lines, the line number to blame and the message."""
    row = 5  # 0-based index into lines; file line number row + 1
    name, encoding = lines[row].split(",")
    tokens = encoding.split(" ")
    out = list(lines)
    if kind == "header":
        out[0] = "image,mask"
        return out, 1, "header is 'image,mask'"
    if kind == "no-header":
        return out[1:], 1, "header is"
    if kind == "missing-row":
        del out[row]
        return out, None, f"1 expected images have no row: {name}"
    if kind == "duplicate":
        out.insert(row + 1, lines[row])
        return out, row + 2, f"{name}: duplicate row (first on line {row + 1})"
    if kind == "extra":
        out.append("ffffffffffff_01.jpg,1 2")
        return out, len(out), "not an image of the sample submission"
    if kind == "odd-tokens":
        out[row] = f"{name},{' '.join(tokens[:-1])}"
        return out, row + 1, "odd number of tokens"
    if kind == "non-integer":
        out[row] = f"{name},{encoding} 7.5 2"
        return out, row + 1, "not a non-negative integer"
    if kind == "zero-length":
        out[row] = f"{name},{' '.join(tokens[:-1])} 0"
        return out, row + 1, "must be >= 1"
    if kind == "negative":
        out[row] = f"{name},{' '.join(tokens[:-1])} -4"
        return out, row + 1, "negative"
    if kind == "unsorted":
        pairs = [tokens[i:i + 2] for i in range(0, len(tokens), 2)]
        pairs[0], pairs[1] = pairs[1], pairs[0]
        out[row] = f"{name},{' '.join(t for pair in pairs for t in pair)}"
        return out, row + 1, "unsorted runs"
    if kind == "overlap":
        out[row] = f"{name},{tokens[0]} {int(tokens[1]) + int(tokens[2])} {' '.join(tokens[2:])}"
        return out, row + 1, "overlapping runs"
    if kind == "past-the-end":
        out[row] = f"{name},{encoding} {1280 * 1918} 5"
        return out, row + 1, "past the 1280x1918 image"
    if kind == "no-comma":
        out[row] = f"{name} {encoding}"
        return out, row + 1, "expected 'img,rle_mask'"
    if kind == "blank-line":
        out.insert(row, "")
        return out, row + 1, "blank line"
    if kind == "huge-number":  # more than 64 bits
        out[row] = f"{name},99999999999999999999 1"
        return out, row + 1, "token 1 (99999999999999999999) is too large"
    if kind == "three-fields":
        out[row] = f"{name},{encoding},{encoding}"
        return out, row + 1, "expected 'img,rle_mask', got 3 field(s)"
    if kind == "unclosed-quote":
        out[row] = f'{name},"{encoding}'
        return out, row + 1, "not a CSV row"
    if kind == "column-major-garbage":
        out[row] = f"{name},{encoding.replace(' ', ';')}"
        return out, row + 1, "not a non-negative integer"
    raise AssertionError(kind)


CORRUPTIONS = ["header", "no-header", "missing-row", "duplicate", "extra", "odd-tokens",
               "non-integer", "zero-length", "negative", "unsorted", "overlap", "past-the-end",
               "no-comma", "blank-line", "column-major-garbage", "huge-number", "three-fields",
               "unclosed-quote"]


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_check_catches_each_corruption_with_its_line(kind, valid_csv, real_masks, tmp_path):
    lines, line_number, message = corrupt(csv_lines(valid_csv), kind)
    broken = tmp_path / f"{kind}.csv"
    broken.write_text("\n".join(lines) + "\n")
    report = check_submission(broken, list(real_masks))
    assert not report.ok
    assert any(line == line_number and message in text for line, text in report.errors), \
        report.errors


def test_truncated_file_is_caught(valid_csv, real_masks, tmp_path):
    data = valid_csv.read_bytes()
    cut = tmp_path / "cut.csv"
    cut.write_bytes(data[: len(data) // 2])
    report = check_submission(cut, list(real_masks))
    assert not report.ok
    assert any("expected images have no row" in text for _, text in report.errors)


def test_cli_check_ok_and_errors(valid_csv, real_masks, tmp_path):
    sample = tmp_path / "sample.csv"
    sample.write_text("img,rle_mask\n" + "".join(f"{n},1 1\n" for n in real_masks))
    assert read_sample_names(sample) == list(real_masks)
    ok = subprocess.run([sys.executable, "-m", "carmask", "submission", "check", str(valid_csv),
                         "--sample", str(sample)], capture_output=True, text=True)
    assert ok.returncode == 0 and f"OK {valid_csv}: 24 rows" in ok.stdout
    lines, _, _ = corrupt(csv_lines(valid_csv), "overlap")
    broken = tmp_path / "broken.csv"
    broken.write_text("\n".join(lines) + "\n")
    bad = subprocess.run([sys.executable, "-m", "carmask", "submission", "check", str(broken),
                          "--sample", str(sample)], capture_output=True, text=True)
    assert bad.returncode == 1
    assert f"{broken}:6: " in bad.stderr and "overlapping runs" in bad.stderr


def test_real_sample_submission_names(carvana):
    names = read_sample_names(carvana / "sample_submission.csv")
    assert len(names) == 100064 and len(set(names)) == 100064
    assert {p.name for p in (carvana / "test").glob("*.jpg")} <= set(names)


def quoted_copy(source: Path, target: Path, blank_lines: int = 1) -> Path:
    """The same CSV as a spreadsheet would save it: every field quoted, CRLF, blank line(s) last."""
    with open(source, newline="") as file, open(target, "w", newline="") as out:
        csv.writer(out, quoting=csv.QUOTE_ALL).writerows(csv.reader(file))
        out.write("\r\n" * blank_lines)
    return target


def test_quoted_fields_and_blank_lines_at_the_end_are_accepted(valid_csv, real_masks, tmp_path):
    """Kaggle reads CSV as the csv module does: check, sample names and merge all agree."""
    quoted = quoted_copy(valid_csv, tmp_path / "quoted.csv", blank_lines=2)
    assert quoted.read_text().startswith('"img","rle_mask"\n')
    report = check_submission(quoted, list(real_masks))
    assert report.ok and report.rows == len(real_masks), report.errors
    assert read_sample_names(quoted) == list(real_masks)
    result = subprocess.run([sys.executable, "-m", "carmask", "submission", "check", str(quoted),
                             "--sample", str(quoted)], capture_output=True, text=True)
    assert result.returncode == 0 and f"OK {quoted}: 24 rows" in result.stdout, result.stderr

    # Two quoted shards merge into the plain file the writer makes.
    lines = csv_lines(valid_csv)
    shards = []
    for number, rows in enumerate((lines[1:10], lines[10:])):
        plain = tmp_path / f"plain{number}.csv"
        plain.write_text("\n".join([lines[0], *rows]) + "\n")
        shards.append(quoted_copy(plain, tmp_path / f"shard{number}.csv"))
    merged = tmp_path / "merged.csv"
    assert merge_submissions(shards, merged, list(real_masks)) == []
    assert merged.read_bytes() == valid_csv.read_bytes()


def test_merge_names_the_line_of_a_malformed_row(valid_csv, real_masks, tmp_path):
    lines, number, message = corrupt(csv_lines(valid_csv), "unclosed-quote")
    shard = tmp_path / "shard.csv"
    shard.write_text("\n".join(lines) + "\n")
    with pytest.raises(SubmissionError, match=f"shard.csv:{number}: {message}"):
        merge_submissions([shard], tmp_path / "merged.csv", list(real_masks))


def carmask(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "carmask", *args], capture_output=True, text=True)


def test_cli_check_escapes_control_characters_in_names(valid_csv, tmp_path):
    lines = csv_lines(valid_csv)
    sneaky = tmp_path / "sneaky.csv"
    sneaky.write_text("\n".join([*lines, "car\x1b[2J[bold]_01.jpg,1 1"]) + "\n")
    sample = tmp_path / "sample.csv"
    sample.write_text("\n".join(lines) + "\n")
    result = carmask("submission", "check", str(sneaky), "--sample", str(sample))
    assert result.returncode == 1
    assert (f"{sneaky}:26: car\\x1b[2J[bold]_01.jpg: not an image of the sample submission"
            in result.stderr.splitlines())
    assert "\x1b" not in result.stderr + result.stdout


def test_cli_files_that_are_not_utf8_are_one_line_errors(valid_csv, tmp_path):
    lines = valid_csv.read_bytes().split(b"\n")
    latin = tmp_path / "latin1.csv"
    latin.write_bytes(b"\n".join([*lines[:3], b"voiture_caf\xe9.jpg,1 1", *lines[3:]]))
    for args in (("submission", "check", str(valid_csv), "--sample", str(latin)),
                 ("submission", "check", str(latin)),
                 ("submission", "merge", str(latin), "--sample", str(valid_csv),
                  "--out", str(tmp_path / "merged.csv"))):
        result = carmask(*args)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.splitlines() == [
            f"error: {latin}:4: not UTF-8 text (byte 0xe9 at column 12); is this really a CSV file?"]


# -- resuming: what is kept is checked, and nothing that is not a submission is replaced -------
def test_resume_into_another_jobs_submission_is_refused_and_keeps_its_rows(real_masks, tmp_path):
    names = list(real_masks)
    out = tmp_path / "sub.csv"
    rows = [f"{n},{rle.encode(real_masks[n])}\n" for n in names[:2]] + ["other_job.jpg,1 1\n"]
    out.write_text("img,rle_mask\n" + "".join(rows))
    before = out.read_bytes()
    with pytest.raises(SubmissionError, match="1 photo.*outside this job.*'other_job.jpg'"):
        SubmissionWriter(out, names, resume=True, shape=SHAPE)
    assert out.read_bytes() == before and not out.with_name("sub.csv.spool").exists()



def test_resume_redoes_rows_that_are_not_valid_and_names_their_lines(real_masks, tmp_path):
    names = list(real_masks)
    out = tmp_path / "sub.csv"
    good = [f"{n},{rle.encode(real_masks[n])}\n" for n in names[:6]]
    rows = [good[0], f"{names[1]},5 0\n", good[2], "no comma here\n",
            good[3], f"{names[4]},1 1\n".replace("1 1", "1 1 1"), good[5], good[0]]
    out.write_text("img,rle_mask\n" + "".join(rows))
    writer = SubmissionWriter(out, names, resume=True, shape=SHAPE)
    assert writer.done == {names[0], names[2], names[3], names[5]}
    assert writer.dropped == [
        f"{out}:3: {names[1]}: invalid RLE: pair 1: length 0 must be >= 1",
        f"{out}:5: expected 'img,rle_mask', got 'no comma here'",
        f"{out}:7: {names[4]}: invalid RLE: odd number of tokens (3): RLE needs 'start length' pairs",
        f"{out}:9: {names[0]}: a second row for this image (the first is kept)",
    ]
    for name in writer.remaining:
        writer.add(name, real_masks[name])
    writer.finalize()
    assert check_submission(out, names).ok
    assert out.read_bytes() == write_submission(tmp_path / "ref.csv", names, real_masks.items()).read_bytes()


def test_resume_refuses_a_file_that_is_not_a_submission(tmp_path):
    notes = tmp_path / "notes.csv"
    notes.write_bytes(b"name,phone\nada,555\n")
    with pytest.raises(SubmissionError, match="notes.csv: not a submission .* refusing to resume"):
        SubmissionWriter(notes, ["a.jpg"], resume=True)
    assert notes.read_bytes() == b"name,phone\nada,555\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.csv"]  # no spool, no lock
    with pytest.raises(SubmissionError, match="not a submission"):
        submission_writer.check_resumable(notes)


def test_a_second_process_cannot_write_the_same_submission(tmp_path):
    from carmask.util.output_files import OutputError
    out = tmp_path / "sub.csv"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from carmask.kaggle.writer import SubmissionWriter; "
         "w = SubmissionWriter(sys.argv[1], ['a.jpg']); print('ready', flush=True); time.sleep(60)",
         str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(OutputError, match=rf"sub.csv is being written by another carmask "
                                              rf"process \(pid {holder.pid}"):
            SubmissionWriter(out, ["a.jpg"])
    finally:
        holder.kill()
        holder.wait()
    SubmissionWriter(out, ["a.jpg"]).close()  # a killed holder leaves no lock behind
