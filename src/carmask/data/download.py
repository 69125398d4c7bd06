"""Fetch the competition data with the Kaggle API, only when a user asks for it."""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

COMPETITION = "carvana-image-masking-challenge"
HOW_TO = f"""\
To download the Carvana data you need a Kaggle account and an API token:
  1. Sign in at https://www.kaggle.com and open Settings -> API -> "Create New Token".
     Save the downloaded kaggle.json as ~/.kaggle/kaggle.json (chmod 600), or set the
     KAGGLE_USERNAME and KAGGLE_KEY environment variables.
  2. Accept the competition rules once at
     https://www.kaggle.com/competitions/{COMPETITION}/rules
     (the API refuses with 403 Forbidden until you do).
Then run this command again."""


class DownloadError(RuntimeError):
    pass


# What the competition's data page lists (train_hq/test_hq: the same photos at 1918x1280, less
# compressed; 29bb3ece3180_11.jpg: a replacement for a broken test photo).
COMPETITION_FILES = ("29bb3ece3180_11.jpg", "metadata.csv.zip", "sample_submission.csv.zip",
                     "test.zip", "test_hq.zip", "train.zip", "train_hq.zip", "train_masks.csv.zip",
                     "train_masks.zip")


def kaggle_credentials_present() -> bool:
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    return (config_dir / "kaggle.json").is_file()


def check_request(out: str | Path, files: list[str] | None = None) -> None:
    """DownloadError for a file the competition does not have or an --out that cannot be a
    folder: found before asking Kaggle for 25 GB."""
    from carmask.util.output_files import OutputError, check_output_dir

    for name in files or ():
        if name not in COMPETITION_FILES:
            raise DownloadError(f"--file {name}: not a file of the competition; its files are "
                                f"{', '.join(COMPETITION_FILES)}")
    try:
        check_output_dir(out, "--out folder")
    except OutputError as error:
        raise DownloadError(str(error)) from None


def download_competition(out: str | Path, competition: str = COMPETITION,
                         files: list[str] | None = None, unzip: bool = True) -> Path:
    """Download (and unzip) the competition files into `out`, in the Kaggle layout.

    Raises DownloadError with instructions when there are no credentials or the rules have not
    been accepted.
    """
    check_request(out, files)
    if not kaggle_credentials_present():
        raise DownloadError("no Kaggle API credentials found.\n" + HOW_TO)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        import kaggle  # noqa: F401  (imported late: it reads the credentials on import)
    except ImportError:
        raise DownloadError("the Kaggle client is not installed: pip install 'carmask[train]' "
                            "(or pip install kaggle)") from None
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
        api = KaggleApi()
        api.authenticate()
        if files:
            for name in files:
                log.info("downloading %s", name)
                api.competition_download_file(competition, name, path=str(out), quiet=False)
        else:
            log.info("downloading all files of %s (about 25 GB)", competition)
            api.competition_download_files(competition, path=str(out), quiet=False)
    except DownloadError:
        raise
    except Exception as error:  # the kaggle client raises bare HTTP errors
        message = str(error)
        if "403" in message or "Forbidden" in message:
            raise DownloadError(f"Kaggle refused the download (403): accept the rules first.\n{HOW_TO}") from error
        raise DownloadError(f"Kaggle download failed: {message}") from error
    if unzip:
        for archive in sorted(out.glob("*.zip")):
            log.info("unzipping %s", archive.name)
            with zipfile.ZipFile(archive) as bundle:
                bundle.extractall(out)
            archive.unlink()
        for nested in sorted(out.glob("*.zip")):  # competition zip holds per-folder zips
            with zipfile.ZipFile(nested) as bundle:
                bundle.extractall(out)
            nested.unlink()
    return out
