"""Tools the tests need from outside Python: ``promtool`` from Debian's prometheus package."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path


def _tool_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lifecycled-test-tools"


def _extract_promtool_from_deb(dest: Path) -> Path | None:
    """Download Debian's `prometheus` package and extract only `promtool`."""
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb") and shutil.which("tar")):
        return None
    target = dest / "usr" / "bin" / "promtool"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)  # lets apt's sandbox user write the download

        def download() -> bool:
            result = subprocess.run(
                ["apt-get", "download", "-q", "prometheus"],
                cwd=tmp,
                env=env,
                capture_output=True,
                timeout=600,
                check=False,
            )
            return result.returncode == 0

        if not download():
            if os.geteuid() != 0:
                return None
            subprocess.run(
                ["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600, check=False
            )
            if not download():
                return None
        debs = sorted(Path(tmp).glob("prometheus_*.deb"))
        if not debs:
            return None
        dest.mkdir(parents=True, exist_ok=True)
        with subprocess.Popen(
            ["dpkg-deb", "--fsys-tarfile", str(debs[0])], stdout=subprocess.PIPE
        ) as deb:
            subprocess.run(
                ["tar", "-x", "-C", str(dest), "./usr/bin/promtool"],
                stdin=deb.stdout,
                capture_output=True,
                timeout=600,
                check=False,
            )
    return target if target.is_file() and os.access(target, os.X_OK) else None


def _apt_install_prometheus() -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "prometheus"]
    if subprocess.run(cmd, env=env, capture_output=True, timeout=900, check=False).returncode:
        subprocess.run(
            ["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600, check=False
        )
        subprocess.run(cmd, env=env, capture_output=True, timeout=900, check=False)


@functools.cache
def find_promtool() -> str | None:
    """Path of a working `promtool`, or None when none can be had.

    Order: PATH; a copy extracted earlier into the user's cache; `promtool`
    extracted from Debian's `prometheus` package (download only: no service,
    no dependencies); as root, `apt-get install prometheus` as a last resort.
    """
    found = shutil.which("promtool")
    if found:
        return found
    cache = _tool_cache_dir() / "prometheus"
    cached = cache / "usr" / "bin" / "promtool"
    if cached.is_file() and os.access(cached, os.X_OK):
        return str(cached)
    extracted = _extract_promtool_from_deb(cache)
    if extracted is not None:
        return str(extracted)
    if os.geteuid() == 0 and shutil.which("apt-get"):
        _apt_install_prometheus()
        return shutil.which("promtool")
    return None
