"""The distribution installs one import name, ``mtrl``: the top-level folders ``agents/``,
``envs/`` and ``benchmarks/`` become ``mtrl.agents``, ``mtrl.envs`` and ``mtrl.benchmarks``, so
installing mtrl beside a PyPI package called ``agents``, ``envs`` or ``benchmarks`` breaks neither."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_only_the_mtrl_package_and_its_console_script(tmp_path):
    # built from a copy of the sources: setuptools builds in place and would reuse a stale build/
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "build", "runs", "*.egg-info", "__pycache__", ".gl", ".whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("mtrl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert top - dist_info == {"mtrl"}, sorted(top)
    for sub in ("agents/mtsac.py", "envs/workers.py", "envs/metaworld.py", "benchmarks/update.py"):
        assert f"mtrl/{sub}" in names
    (info,) = dist_info
    assert zipfile.ZipFile(wheel).read(f"{info}/top_level.txt").decode().split() == ["mtrl"]
    entry_points = zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
    assert "mtrl = mtrl.cli:main" in entry_points


def test_no_module_imports_a_generic_top_level_name():
    """Every import of the project's own subpackages goes through ``mtrl.``."""
    offenders = []
    for path in ROOT.glob("**/*.py"):
        if any(part.startswith(".") or part in ("build", "runs") for part in path.relative_to(ROOT).parts):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith(("from agents", "from envs", "from benchmarks", "import agents", "import envs", "import benchmarks")):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {stripped}")
    assert not offenders, "\n".join(offenders)
