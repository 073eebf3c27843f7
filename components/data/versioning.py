"""Data versioning with DVC (its CLI, so it behaves exactly as a user's `dvc`),
and the lineage every model carries: data md5s and the git revision."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml


def _dvc(args: list[str], cwd: Path) -> str:
    exe = shutil.which("dvc") or str(Path(sys.executable).parent / "dvc")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        # DVC's own reason first (its ERROR line), so that a one-line summary of the failure names it;
        # callers never pass -q: it silences the ERROR lines too
        output = (proc.stdout + proc.stderr).strip()
        reason = next((line for line in output.splitlines() if line.startswith("ERROR")),
                      output.splitlines()[-1] if output else f"exit status {proc.returncode}")
        raise RuntimeError(f"dvc {args[0]} failed: {reason}\n(dvc {' '.join(args)} in {cwd})\n{output}")
    return proc.stdout


def is_git_repo(path: Path) -> bool:
    try:
        return subprocess.run(["git", "rev-parse", "--git-dir"], cwd=path, capture_output=True).returncode == 0
    except FileNotFoundError:  # no git installed (the component image)
        return False


def ensure_dvc_repo(root: Path, remote: str) -> None:
    """`dvc init` (once) and a default local remote folder."""
    if not (root / ".dvc").is_dir():
        _dvc(["init"] if is_git_repo(root) else ["init", "--no-scm"], root)
        if is_git_repo(root):
            _dvc(["config", "core.autostage", "true"], root)
    remote_path = local_remote_path(root, remote)
    remote_path.mkdir(parents=True, exist_ok=True)
    _dvc(["remote", "add", "-f", "-d", "local", str(remote_path)], root)


def local_remote_path(root: Path, remote: str) -> Path:
    """The folder a config's local DVC remote names (`~` expanded, relative to `root`)."""
    path = Path(os.path.expanduser(remote))
    return path if path.is_absolute() else (root / path).resolve()


def track_files(root: Path, paths: list[Path], push: bool = True) -> dict[str, str]:
    """`dvc add` each path (one .dvc pointer per partition), then `dvc push`."""
    rel = [str(p.resolve().relative_to(root.resolve())) for p in paths]
    _dvc(["add", *rel], root)
    if push:
        _dvc(["push", *[r + ".dvc" for r in rel]], root)
    return {r: dvc_md5(Path(root / r)) for r in rel}


# On a cluster the DVC remote comes from the environment: where from a ConfigMap, the credentials
# (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, read by DVC's S3 client) from a Secret.
REMOTE_URL_ENV = "MTLOPS_DVC_REMOTE_URL"
ENDPOINT_URL_ENV = "MTLOPS_DVC_ENDPOINT_URL"
ENV_REMOTE = "cluster"


def use_remote_from_env(root: Path) -> str | None:
    """Make $MTLOPS_DVC_REMOTE_URL (and its S3 endpoint) the default remote of `root`, in
    .dvc/config.local so the committed config is untouched; credentials are never written.
    Outside git (a container holding only the DVC pointers) DVC also needs core.no_scm
    (DVC issue #3574). Returns the URL, or None when the variable is unset (local default)."""
    url = os.environ.get(REMOTE_URL_ENV)
    if not url:
        return None
    if not is_git_repo(root):
        _dvc(["config", "--local", "core.no_scm", "true"], root)
    _dvc(["remote", "add", "--local", "--force", "--default", ENV_REMOTE, url], root)
    endpoint = os.environ.get(ENDPOINT_URL_ENV)
    if endpoint:
        _dvc(["remote", "modify", "--local", ENV_REMOTE, "endpointurl", endpoint], root)
    return url


def pull(root: Path, paths: list[Path]) -> None:
    """`dvc pull` exactly the versions the .dvc pointers of `paths` name."""
    use_remote_from_env(root)
    rel = [str(p.resolve().relative_to(root.resolve())) + ".dvc" for p in paths]
    _dvc(["pull", *rel], root)


def dvc_md5(path: Path) -> str:
    """The md5 DVC recorded for a tracked file (from its .dvc pointer)."""
    pointer = Path(str(path) + ".dvc")
    if not pointer.is_file():
        raise FileNotFoundError(f"{path} is not tracked by DVC (no {pointer.name})")
    return yaml.safe_load(pointer.read_text())["outs"][0]["md5"]


def data_version(md5s: dict[str, str]) -> str:
    """One id for a set of partitions: md5 over their sorted (path, md5) pairs."""
    h = hashlib.md5()
    for name, md5 in sorted(md5s.items()):
        h.update(f"{name}:{md5}\n".encode())
    return h.hexdigest()


def git_revision(path: Path) -> str:
    """HEAD's sha, with `-dirty` when tracked files differ; 'unknown' outside git."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True)
    if head.returncode != 0:
        return "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path,
                           capture_output=True, text=True).stdout.strip()
    return head.stdout.strip() + ("-dirty" if dirty else "")
