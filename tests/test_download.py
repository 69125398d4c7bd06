import subprocess
import sys

import pytest

from carmask.data.download import DownloadError, download_competition


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle-config"))
    monkeypatch.setenv("HOME", str(tmp_path))


def test_without_credentials_explains_how_to_get_them(no_credentials, tmp_path):
    with pytest.raises(DownloadError) as caught:
        download_competition(tmp_path / "data")
    message = str(caught.value)
    assert "no Kaggle API credentials" in message
    assert "kaggle.json" in message and "KAGGLE_USERNAME" in message
    assert "carvana-image-masking-challenge/rules" in message
    assert not (tmp_path / "data").exists()  # nothing half-made


def test_cli_download_error_path(no_credentials, tmp_path):
    result = subprocess.run([sys.executable, "-m", "carmask", "data", "download", "--out",
                             str(tmp_path / "data")], capture_output=True, text=True)
    assert result.returncode == 1
    assert "no Kaggle API credentials" in result.stderr and "Create New Token" in result.stderr
