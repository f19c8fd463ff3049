"""A non-editable install works: the wheel holds every package and the shipped models, and the
package imports and runs from it alone (an editable install, as `make test` uses, hides a missing
package: the source tree is on the path)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "circuitfind").rglob("__init__.py")}
    assert on_disk | {"circuitfind.tasks"} == listed


def test_the_wheel_runs_on_its_own(tmp_path):
    source = tmp_path / "source"  # what a build reads, without a build/ folder left by an earlier one
    source.mkdir()
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / part, source / part)
    for part in ("circuitfind", "tasks"):
        shutil.copytree(ROOT / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    wheel = next((tmp_path / "dist").glob("circuitfind-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "circuitfind/sweep/store.py" in names and "circuitfind/tasks/ioi.py" in names
    assert "circuitfind/zoo_models/toy-lm/model.safetensors" in names
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    # from the wheel's files alone: the import must resolve there, not to the source tree
    code = ("import circuitfind as cf, pathlib; assert pathlib.Path(cf.__file__).parent.parent.name == 'site'; "
            "m = cf.load_model('toy-lm'); r = cf.discover(m, 'ioi', 'eap', n=8, quiet=True, report=False); "
            "print(r.circuit.n_edges)")
    # -S: no .pth files, so no editable-install finder that would serve missing packages from the source
    # tree; the dependencies come from site-packages, put on the path by hand
    deps = [p for p in sys.path if p.endswith("site-packages")]
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), *deps])}
    ran = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert int(ran.stdout.split()[-1]) > 0
