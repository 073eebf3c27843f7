"""DVC as a pipeline step sees it inside the component image: a folder with the DVC pointers
and no git, the remote named by the environment (ConfigMap) with credentials only in the
environment (Secret). Real DVC; a local folder stands in for the S3 bucket, the S3 settings are
checked as DVC writes them (no MinIO here)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from components.data.versioning import (
    ENDPOINT_URL_ENV,
    REMOTE_URL_ENV,
    ensure_dvc_repo,
    pull,
    track_files,
    use_remote_from_env,
)


def image_folder(repo: Path, dest: Path, pointers: dict[str, str]) -> Path:
    """What the Dockerfile copies: .dvc/config and the pointers, nothing else (no .git, no data)."""
    (dest / ".dvc").mkdir(parents=True)
    shutil.copy(repo / ".dvc" / "config", dest / ".dvc" / "config")
    for rel, text in pointers.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_text(text)
    return dest


def test_a_git_less_image_folder_pulls_exactly_its_pointers_version_from_the_env_remote(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REMOTE_URL_ENV, raising=False)
    repo, laptop_remote = tmp_path / "repo", tmp_path / "laptop-remote"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    ensure_dvc_repo(repo, str(laptop_remote))
    data = repo / "data" / "flights" / "2013-01.csv"
    data.parent.mkdir(parents=True)
    data.write_text("a,b\n1,2\n")
    track_files(repo, [data])
    v1 = {"data/flights/2013-01.csv.dvc": (repo / "data/flights/2013-01.csv.dvc").read_text()}
    data.write_text("a,b\n1,2\n3,4\n")
    track_files(repo, [data])  # the remote now holds two versions

    bucket = tmp_path / "bucket"  # the cluster's remote; the laptop path in .dvc/config is gone
    laptop_remote.rename(bucket)
    image = image_folder(repo, tmp_path / "app", v1)
    wanted = [image / "data" / "flights" / "2013-01.csv"]
    with pytest.raises(RuntimeError, match="dvc pull"):
        pull(image, wanted)  # no env: the committed default remote, which a container cannot reach

    monkeypatch.setenv(REMOTE_URL_ENV, str(bucket))
    pull(image, wanted)
    assert wanted[0].read_text() == "a,b\n1,2\n"  # v1, the version the pointer names, not the newest
    local = (image / ".dvc" / "config.local").read_text()
    assert "no_scm = true" in local and str(bucket) in local  # DVC issue #3574: no git in the image
    assert (image / ".dvc" / "config").read_text() == (repo / ".dvc" / "config").read_text()


def test_s3_remote_from_env_gets_its_endpoint_and_never_the_credentials(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text("")
    monkeypatch.setenv(REMOTE_URL_ENV, "s3://mtlops/dvc")
    monkeypatch.setenv(ENDPOINT_URL_ENV, "http://mtlops-minio:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key-id-from-the-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-from-the-secret")
    assert use_remote_from_env(tmp_path) == "s3://mtlops/dvc"
    local = (tmp_path / ".dvc" / "config.local").read_text()
    assert "url = s3://mtlops/dvc" in local and "endpointurl = http://mtlops-minio:9000" in local
    assert "remote = cluster" in local
    written = "".join(p.read_text() for p in (tmp_path / ".dvc").rglob("*") if p.is_file())
    assert "from-the-secret" not in written


def test_without_the_env_remote_nothing_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REMOTE_URL_ENV, raising=False)
    assert use_remote_from_env(tmp_path) is None
    assert not (tmp_path / ".dvc").exists()
