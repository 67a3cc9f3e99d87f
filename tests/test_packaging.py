"""The wheel as pip builds it: every script and data file inside, no packaging warnings."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_carries_every_data_file_without_warnings(tmp_path: Path) -> None:
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    output = build.stdout + build.stderr
    assert "absent from the `packages` configuration" not in output
    assert "BuildBackendWarning" not in output
    [wheel] = tmp_path.glob("lifecycled-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = {
        str(p.relative_to(ROOT))
        for p in [*ROOT.glob("daemon/lua/**/*.lua"), *ROOT.glob("daemon/console/templates/*"),
                  *ROOT.glob("daemon/console/static/*"), ROOT / "daemon" / "openapi.json",
                  ROOT / "daemon" / "plans.toml", ROOT / "daemon" / "py.typed"]
    }  # fmt: skip
    assert wanted <= names, sorted(wanted - names)
