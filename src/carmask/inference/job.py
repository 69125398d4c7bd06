"""A whole prediction job: photos → a Kaggle submission (streamed in sample order, resumable,
shardable) and/or one mask file per photo, with its outputs checked and locked before the model
loads, and photos that fail listed rather than fatal. The masks come from carmask.inference.predictor; a
submission alone, on the torch backend, takes its fast path (`Predictor.predict_runs`).

`share_job` settles one process's part of a job: all of it, its `--shard`, or under torchrun its
rank's share into a part file, which rank 0 merges when every rank is done (`JobShare.finish`)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from carmask.util.atomic import atomic_path
from carmask.data.io import DataError, read_photo_header
from carmask.inference.distributed import Rank
from carmask.kaggle.writer import spool_file
from carmask.inference.predictor import Predictor

log = logging.getLogger(__name__)


@dataclass
class JobSummary:
    expected: int  # images this job (shard) should cover
    predicted: int  # predicted in this run
    resumed: int  # already done by an earlier run
    failures: list[tuple[str, str]]  # (image name, error)
    missing: list[str]  # expected names with no photo or no mask in the end
    seconds: float
    peak_rss_mb: float
    submission: Path | None
    masks_dir: Path | None
    dropped: list[str] = field(default_factory=list)  # resumed rows found invalid and redone
    models: Counter = field(default_factory=Counter)  # masks made by each model
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (image name, what to check)
    row_size: tuple[int, int] | None = None  # (H, W) of the submission's rows
    off_size: list[str] = field(default_factory=list)  # photos of another size: no row (failures)

    @property
    def complete(self) -> bool:
        return not self.failures and not self.missing

    @property
    def images_per_second(self) -> float:
        return self.predicted / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class JobShare:
    """One process's part of a prediction job (see `share_job`)."""
    out: Path | None  # the submission file this process writes (a part of `whole` under torchrun)
    device: str  # under torchrun, cuda is this rank's own GPU
    whole: Path | None = None  # the job's submission
    split: tuple[int, int] | None = None  # (index, count): this process predicts every count-th
    rank: Rank | None = None  # under torchrun

    def names(self, names: Sequence[str]) -> list[str]:
        """This process's share of the job's `names`."""
        return shard_of(names, self.split)

    def finish(self, names: Sequence[str]) -> list[str] | None:
        """Call when this process's part is written. Under torchrun, wait for every rank; rank 0
        then merges the parts into `whole` in `names` order (SubmissionError if one is bad) and
        returns the names without a mask. None where this process merged nothing."""
        if self.rank is None:
            return None
        from carmask.inference.distributed import merge_parts, wait_for_all

        wait_for_all()
        if not self.rank.leader or self.whole is None:
            return None
        return merge_parts(self.whole, self.rank, list(names))


def share_job(out: Path | None, device: str = "cpu", shard: str | tuple[int, int] | None = None,
              overwrite: bool = False) -> JobShare:
    """What this process does of a job writing the submission `out`: with `shard` ("i/n" or
    (i, n)) that share; under torchrun (RANK, WORLD_SIZE) its rank's share, into a part file
    beside `out`, on its own GPU, after joining the other ranks. ValueError for --shard under
    torchrun (two ways of splitting) and for an existing `out` there without `overwrite`
    (the merge would replace it), before any work."""
    from carmask.inference.distributed import join, part_path, torchrun_rank

    split = parse_shard(shard) if isinstance(shard, str) else shard
    rank = torchrun_rank()
    if rank is None:
        return JobShare(out, device, out, split)
    if split:
        raise ValueError("--shard and torchrun both split the work: give one of them")
    if out is not None and out.exists() and not overwrite:
        raise ValueError(f"{out} exists; --overwrite replaces it")
    join()
    return JobShare(part_path(out, rank) if out is not None else None,
                    f"cuda:{rank.local}" if device == "cuda" else device, out,
                    (rank.index, rank.count), rank)


def parse_shard(text: str) -> tuple[int, int]:
    """"i/n" → (i, n); ValueError naming the option otherwise."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {text}: part i of n counts from 0, so 0 <= i < n (e.g. 0/4 to 3/4)")
    return index, count


def shard_of(names: Sequence[str], shard: tuple[int, int] | None) -> list[str]:
    """Every n-th name from the i-th (0-based): shards are balanced and disjoint."""
    if shard is None:
        return list(names)
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard must be i/n with 0 <= i < n, got {index}/{count}")
    return list(names[index::count])


def photos_by_name(paths: Iterable[str | Path], masks: bool = False) -> dict[str, Path]:
    """Photos keyed by file name, the `img` of their submission rows. Two photos with one name
    (from two folders) would share a row, and with `masks` two with one stem would share a mask
    file: ValueError naming both, rather than one silently replacing the other."""
    photos: dict[str, Path] = {}
    stems: dict[str, Path] = {}
    for path in map(Path, paths):
        if path.name in photos and photos[path.name] != path:
            raise ValueError(f"two photos are named {path.name}: {photos[path.name]} and {path}; "
                             "rows and masks are named after the photo, so predict them apart")
        if masks and path.stem in stems and stems[path.stem] != path:
            raise ValueError(f"{stems[path.stem]} and {path} would both get the mask "
                             f"{path.stem}_mask.png; predict them apart")
        photos[path.name] = stems[path.stem] = path
    return photos


def check_row_names(names: Sequence[str]) -> None:
    """ValueError, before any work, naming the photos whose names cannot be a submission row
    (`carmask.kaggle.submission.name_problem`); commas, quotes and any script are fine."""
    from carmask.kaggle.submission import name_problem

    bad = [(name, problem) for name in names if (problem := name_problem(name))]
    if bad:
        shown = "; ".join(f"{name!r}: {problem}" for name, problem in bad[:3])
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise ValueError(f"{len(bad)} photo name(s) cannot be a submission row: {shown}{more}. "
                         "Rename them, or write only --masks-dir")


def check_outputs(submission: Path | None, masks_dir: Path | None, *, resume: bool = False,
                  overwrite: bool = False, locks: ExitStack | None = None) -> None:
    """Refuse outputs that cannot be written, or whose contents would be lost, before any work:
    OutputError naming the path (and the option that would allow it), or SubmissionError for
    resuming into a file that is not a submission.

    With `locks`, the outputs are also locked (held until that stack closes), after the paths
    are checked and before their contents are: a job still writing them is named as such.
    """
    from carmask.util.output_files import OutputError, check_output_dir, check_output_file, output_lock

    if masks_dir is not None:
        check_output_dir(masks_dir, "--masks-dir")
    if submission is not None:
        check_output_file(submission, "--out submission")
    check_no_clash(submission, masks_dir)  # before a lock or a folder is made at either
    if locks is not None:
        for output in (submission, masks_dir):
            if output is not None:
                locks.enter_context(output_lock(output))
    if submission is None or overwrite:
        return
    if resume:
        from carmask.kaggle.writer import check_resumable
        check_resumable(submission)
        return
    spool = spool_file(submission)
    if spool.exists():
        raise OutputError(f"{spool}: a killed run's rows are there; --resume continues it, "
                          "--overwrite starts again")
    if submission.exists():
        raise OutputError(f"{submission} exists; --overwrite replaces it, --resume continues it")


def check_no_clash(submission: Path | None, masks_dir: Path | None,
                   names: Sequence[str] = ()) -> None:
    """OutputError, before any work, where the outputs would write over each other: --masks-dir
    at the submission's path or at one of the files beside it (its spool, failures list, lock),
    the submission inside a folder it would be, or, given the photo `names`, the submission (or
    a file beside it) at one of the mask files' paths in --masks-dir."""
    from carmask.util.output_files import OutputError, lock_path, refuse_clashes

    files = {}
    if submission is not None:
        files = {"--out submission": submission, "submission's spool": spool_file(submission),
                 "submission's failures list": failures_file(submission),
                 "submission's lock": lock_path(submission)}
    folders = {"--masks-dir": masks_dir}
    if masks_dir is not None:
        files["--masks-dir's lock"] = lock_path(masks_dir)
    refuse_clashes(files, folders)
    if masks_dir is None or submission is None or not names:
        return
    folder = masks_dir.resolve()
    beside = {path.resolve().name: what for what, path in files.items()
              if path.resolve().parent == folder}
    for name in names if beside else ():
        if (what := beside.get(mask_file(masks_dir, name).name)) is not None:
            raise OutputError(f"{mask_file(masks_dir, name)}: the {what} and the mask of {name} in "
                              "--masks-dir would be one file; give them different paths")


def failures_file(submission: Path) -> Path:
    """Where a submission's failed and missing photos are listed, each with why."""
    return submission.with_name(submission.stem + ".failures.csv")


def run_prediction(
    predictor: Predictor,
    photos: dict[str, Path],
    names: Sequence[str],
    *,
    submission: Path | None = None,
    masks_dir: Path | None = None,
    resume: bool = False,
    workers: int | None = None,
    track=None,
    fast: bool | None = None,
) -> JobSummary:
    """Predict `names` (photo names, e.g. 0a0e3fb8f782_01.jpg) found in `photos` and stream them
    into a submission (sample order, atomic, resumable) and/or mask files.

    `fast`: take `Predictor.predict_runs` (the mask runs found on the device; byte for byte the
    same submission); None takes it where it serves: a submission and no mask files, from a
    Predictor that `finds_runs` (the torch backend).

    Names with no photo and photos that fail to decode are listed, the rest goes on; with any
    of them the submission is written with empty rows for them and marked incomplete. So are
    photos not at the submission's size (`submission_size`): Kaggle decodes every row at one
    size, so a row of another would be read as a wrong mask. Mask files take any size.
    The outputs are locked for the run (`NAME.lock`): a second job on them raises OutputError.
    A full disk stops the job with DiskFullError saying what was kept; --resume continues it.
    """
    import resource
    import time

    from carmask.util.output_files import output_lock
    from carmask.util.progress import silent_track

    track = track or silent_track
    if submission is not None:
        check_row_names(names)
        check_no_clash(submission, masks_dir, names)
    started = time.perf_counter()
    with ExitStack() as locks:
        for output in (submission, masks_dir):
            if output is not None:
                locks.enter_context(output_lock(output))
        if fast is None:
            fast = (submission is not None and masks_dir is None
                    and isinstance(predictor, Predictor) and predictor.finds_runs)
        elif fast and masks_dir is not None:
            raise ValueError("the fast path writes a submission only, not mask files")
        summary = _run(predictor, photos, names, submission, masks_dir, resume, workers, track, fast)
    summary.seconds = time.perf_counter() - started
    summary.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return summary


def _run(predictor, photos, names, submission, masks_dir, resume, workers, track, fast) -> JobSummary:
    from carmask.kaggle.writer import SubmissionWriter
    from carmask.util.output_files import is_disk_full

    writer = SubmissionWriter(submission, names, resume=resume,
                              shape=lambda name: _photo_size(photos.get(name))) if submission else None
    try:
        todo = writer.remaining if writer else list(names)
        row_size, off_size = (_rows_off_size(photos, names, todo, masks_dir, workers) if writer
                              else (None, {}))
        failures = list(off_size.items())
        for name, why in failures:
            log.warning("%s: %s", name, why)
        if masks_dir is not None:
            masks_dir.mkdir(parents=True, exist_ok=True)
            if resume:
                todo = [n for n in todo if not mask_file(masks_dir, n).exists()]
        resumed = len(names) - len(todo)
        missing = [n for n in todo if n not in photos]
        # a photo of another size is still predicted for its mask file, never for a row alone
        todo = [n for n in todo if n in photos and (masks_dir is not None or n not in off_size)]
        summary = _predict_all(predictor, photos, todo, writer, masks_dir, off_size, workers,
                               track, fast)
        failures += summary.failures
        if writer:
            writer.finalize(allow_missing=True)
        if (failures or missing) and submission:
            _write_failures(failures_file(submission), failures, missing)
    except BaseException as error:
        if writer:
            writer.close()  # keep the spool: --resume picks up from here
        if is_disk_full(error):
            raise _stopped_by_full_disk(error, writer, masks_dir, names) from error
        raise
    summary.expected, summary.resumed, summary.failures, summary.missing = (
        len(names), resumed, failures, missing)
    summary.submission, summary.masks_dir, summary.row_size = submission, masks_dir, row_size
    summary.off_size = list(off_size)
    summary.dropped = writer.dropped if writer else []
    return summary


def _predict_all(predictor, photos, todo, writer, masks_dir, off_size, workers, track,
                 fast) -> JobSummary:
    """Predict `todo` into the writer (except the photos `off_size` names) and mask files; the
    summary's counts, failures (decoding, saving) and warnings. A full disk stops it at once:
    nothing more could be kept."""
    from carmask.data.io import save_mask
    from carmask.util.output_files import disk_full_error, is_disk_full
    from carmask.util.parallel import BoundedExecutor

    saver = BoundedExecutor(workers=2, name="mask-png") if masks_dir is not None else None
    unsaved: list[tuple[str, str]] = []  # a mask file that could not be written is a failure
    full: list[BaseException] = []  # ... unless the disk is full, which stops the job

    def saved(name, future):
        error = future.exception()
        if error is not None and is_disk_full(error):
            full.append(disk_full_error(error, mask_file(masks_dir, name)))
        elif error is not None:
            unsaved.append((name, f"{mask_file(masks_dir, name)}: {error}"))

    summary = JobSummary(expected=len(todo), predicted=0, resumed=0, failures=[], missing=[],
                         seconds=0.0, peak_rss_mb=0.0, submission=None, masks_dir=masks_dir)
    try:
        predict = predictor.predict_runs if fast else predictor.predict_paths
        stream = predict([photos[n] for n in todo], workers=workers)
        for name, result in track(zip(todo, stream), total=len(todo), description="predicting"):
            if full:
                raise full[0]
            if result.error is not None:
                summary.failures.append((name, result.error))
                log.warning("%s", result.error)
                continue
            if writer and name not in off_size:
                if result.runs is not None:
                    writer.add_runs(name, result.runs)
                else:
                    writer.add(name, result.mask)
            if saver:
                future = saver.submit(save_mask, result.mask, mask_file(masks_dir, name))
                future.add_done_callback(lambda done, name=name: saved(name, done))
            summary.predicted += 1
            summary.models[result.model] += 1
            summary.warnings.extend((name, warning) for warning in result.warnings)
    finally:
        if saver:
            saver.shutdown()
    if full:
        raise full[0]
    summary.failures += unsaved
    return summary


def submission_size(sizes: Iterable[tuple[int, int] | None]) -> tuple[int, int] | None:
    """The (H, W) of every row of a submission: Kaggle decodes each row at one size, Carvana's
    1280x1918, so that is the size wherever a photo has it; else (a synthetic or another data
    set) the photos' most common size, the first photo's of those as common. None without a
    readable photo."""
    from carmask.kaggle.rle import CARVANA_SHAPE

    counts = Counter(size for size in sizes if size is not None)
    if CARVANA_SHAPE in counts:
        return CARVANA_SHAPE
    return counts.most_common(1)[0][0] if counts else None


def _rows_off_size(photos: dict[str, Path], names: Sequence[str], todo: Sequence[str],
                   masks_dir: Path | None, workers: int | None
                   ) -> tuple[tuple[int, int] | None, dict[str, str]]:
    """(the submission's row size, the photos of `todo` at another size with why). Every
    photo of the job counts, not only those left: a resumed run keeps the size of the first."""
    from carmask.kaggle.rle import CARVANA_SHAPE
    from carmask.util.parallel import imap_bounded

    present = [n for n in names if n in photos]
    sizes = dict(zip(present, imap_bounded(lambda n: _photo_size(photos[n]), present, workers)))
    row = submission_size(sizes.values())
    whose = "Kaggle's size" if row == CARVANA_SHAPE else "the size of the job's other photos"
    kept = "its mask file is written, its row" if masks_dir is not None else "its row"
    return row, {
        name: (f"the photo is {size[1]}x{size[0]} but this submission's rows are "
               f"{row[1]}x{row[0]} ({whose}): Kaggle decodes every row at one size, so its row "
               f"would be a wrong mask; {kept} is left empty")
        for name in todo if (size := sizes.get(name)) is not None and size != row}


def _stopped_by_full_disk(error: BaseException, writer, masks_dir: Path | None,
                          names: Sequence[str]) -> Exception:
    """The one error a job stopped by a full disk ends with: where, and what was kept for
    --resume (the rows in the spool, the mask files already written)."""
    from carmask.util.output_files import DiskFullError

    kept = []
    if writer is not None:
        kept.append(f"{len(writer.done)} of {len(names)} rows in {writer.spool_path}")
    if masks_dir is not None:
        written = sum(mask_file(masks_dir, n).exists() for n in names)
        kept.append(f"{written} of {len(names)} mask files in {masks_dir}")
    where = str(error) if isinstance(error, DiskFullError) else f"the disk is full ({error})"
    return DiskFullError(f"{where}; the job stopped, keeping {' and '.join(kept)}. Free some "
                         "space, then run the same command with --resume to continue")


def _photo_size(path: Path | None) -> tuple[int, int] | None:
    """A photo's displayed (H, W) from its header, the size its mask must have; None when
    there is no readable photo (its row is then checked for all but its length)."""
    try:
        return read_photo_header(path).size if path is not None else None
    except DataError:
        return None


def mask_file(masks_dir: Path, name: str) -> Path:
    """Where the mask of the photo `name` goes in --masks-dir."""
    return masks_dir / (Path(name).stem + "_mask.png")


def _write_failures(path: Path, failures: list[tuple[str, str]], missing: list[str]) -> None:
    import csv
    # any name a file system allows: raw bytes that are not UTF-8 are written back as they were
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8",
                                        errors="surrogateescape") as file:
        out = csv.writer(file)
        out.writerow(["img", "error"])
        out.writerows(failures)
        out.writerows((name, "no photo for this name") for name in missing)
