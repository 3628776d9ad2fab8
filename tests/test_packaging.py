"""The wheel installs clean: built, checked by twine, installed in a fresh environment, run.

``python -m build`` makes the sdist and, from it, the wheel (so a file the
sdist misses is missing from the wheel too); ``twine check --strict`` reads
both. The wheel then goes into a fresh virtual environment that has neither
ddcal nor the dev tools, and ``ddcal --help``, an import of every module (of
``ddcal.integrations``, up to the ``ImportError`` that names its extra) and
the README's quick start run there.

The fresh environment gets ddcal's runtime dependencies, pinned CPU torch
first, without downloading anything: a ``.pth`` file adds a folder of
symbolic links to exactly those distributions (what ``Requires-Dist`` of the
wheel names, and what they require) of the running environment. Installing
``torch==2.13.0`` there instead would unpack some 800 MB from the local wheel
(a minute or more on 2 busy cores), and on a machine without that wheel pip
would download the default CUDA build of several GB. The links take a second,
and since the environment holds nothing else, an import ddcal makes of a
package it does not declare (matplotlib, say) fails here.
"""

from __future__ import annotations

import email.parser
import importlib.metadata
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

import ddcal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300


@dataclass(frozen=True)
class Built:
    """The files ``python -m build`` made."""

    wheel: Path
    sdist: Path


@dataclass(frozen=True)
class Installed:
    """A fresh virtual environment with the wheel installed."""

    python: Path
    bin: Path
    site_packages: Path


def _run(command: list[str | Path], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``command``; its output, or a failure that shows it."""
    done = subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
        **kwargs,
    )
    assert done.returncode == 0, f"{command} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that would put the source tree on ``sys.path``."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return {**env, "OMP_NUM_THREADS": "1", "PIP_NO_INPUT": "1", **extra}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """sdist and wheel, built offline with this environment's setuptools (``--no-isolation``)."""
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT], cwd=ROOT)
    (wheel,) = out.glob("ddcal-*.whl")
    (sdist,) = out.glob("ddcal-*.tar.gz")
    return Built(wheel, sdist)


def test_twine_accepts_the_wheel_and_the_sdist(built: Built) -> None:
    done = _run([sys.executable, "-m", "twine", "check", "--strict", built.wheel, built.sdist])
    assert done.stdout.count("PASSED") == 2


def test_the_wheel_holds_every_file_of_the_package(built: Built) -> None:
    expected = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "ddcal").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert "ddcal/py.typed" in expected
    with zipfile.ZipFile(built.wheel) as wheel:
        names = set(wheel.namelist())
        entry_points = wheel.read(f"ddcal-{ddcal.__version__}.dist-info/entry_points.txt")
    assert {name for name in names if name.startswith("ddcal/")} == expected
    assert "ddcal = ddcal.cli:main" in entry_points.decode()


def test_the_version_comes_from_one_place(built: Built) -> None:
    source = (ROOT / "ddcal" / "__init__.py").read_text()
    (written,) = re.findall(r'^__version__ = "([^"]+)"$', source, flags=re.MULTILINE)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"]
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "ddcal.__version__"}
    with zipfile.ZipFile(built.wheel) as wheel:
        metadata = wheel.read(f"ddcal-{written}.dist-info/METADATA").decode()
    assert email.parser.Parser().parsestr(metadata)["Version"] == written == ddcal.__version__
    assert built.wheel.name == f"ddcal-{written}-py3-none-any.whl"
    assert built.sdist.name == f"ddcal-{written}.tar.gz"


def _runtime_closure(requirements: list[str]) -> list[importlib.metadata.Distribution]:
    """The installed distributions ``requirements`` need, transitively (no extras)."""
    found: dict[str, importlib.metadata.Distribution] = {}
    pending = [Requirement(text) for text in requirements]
    while pending:
        requirement = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        if name in found:
            continue
        found[name] = importlib.metadata.distribution(name)
        pending += [Requirement(text) for text in found[name].requires or []]
    return list(found.values())


def _link_distributions(distributions: list[importlib.metadata.Distribution], folder: Path) -> None:
    """Symbolic links in ``folder`` to every top-level file and folder of ``distributions``."""
    folder.mkdir()
    for distribution in distributions:
        files = distribution.files
        assert files is not None, f"{distribution.metadata['Name']} has no RECORD"
        for top in {file.parts[0] for file in files} - {"..", "__pycache__"}:
            source = Path(str(distribution.locate_file(top)))
            if source.exists() and not (folder / top).exists():
                (folder / top).symlink_to(source)


@pytest.fixture(scope="module")
def installed(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """A fresh environment: the wheel, and links to its runtime dependencies; no pip inside."""
    root = tmp_path_factory.mktemp("venv")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site_packages = Path(_run([python, "-c", purelib]).stdout.strip())
    with zipfile.ZipFile(built.wheel) as wheel:
        metadata = wheel.read(f"ddcal-{ddcal.__version__}.dist-info/METADATA").decode()
    requirements = email.parser.Parser().parsestr(metadata).get_all("Requires-Dist") or []
    _link_distributions(_runtime_closure(requirements), root / "dependencies")
    (site_packages / "ddcal-test-dependencies.pth").write_text(f"{root / 'dependencies'}\n")
    pip = [sys.executable, "-m", "pip", "--python", python]
    _run([*pip, "install", "--no-deps", "--no-index", built.wheel], env=_clean_env())
    _run([*pip, "check"], env=_clean_env())
    return Installed(python, bin_dir, site_packages)


def test_the_installed_command_runs(installed: Installed, tmp_path: Path) -> None:
    done = _run([installed.bin / "ddcal", "--help"], cwd=tmp_path, env=_clean_env())
    for command in ("run", "study", "distill", "calibrate", "metrics"):
        assert command in done.stdout


def test_every_module_imports_from_the_installed_wheel(
    installed: Installed, tmp_path: Path
) -> None:
    check = """
import importlib, importlib.metadata, importlib.resources, pkgutil
import ddcal
print(ddcal.__file__)
print(importlib.metadata.version("ddcal"), ddcal.__version__)
print(importlib.resources.files("ddcal").joinpath("py.typed").is_file())
for module in pkgutil.walk_packages(ddcal.__path__, "ddcal."):
    try:
        importlib.import_module(module.name)
    except ImportError as error:  # an integration without its optional extra
        if not module.name.startswith("ddcal.integrations."):
            raise
        print(module.name, error)
"""
    done = _run([installed.python, "-c", check], cwd=tmp_path, env=_clean_env())
    location, versions, typed, *missing = done.stdout.splitlines()
    assert Path(location).is_relative_to(installed.site_packages)
    assert versions == f"{ddcal.__version__} {ddcal.__version__}"
    assert typed == "True"
    # Neither extra is installed there: each integration says which to install.
    assert sorted(missing) == [
        "ddcal.integrations.lightning ddcal.integrations.lightning needs Lightning: "
        "pip install 'ddcal[lightning]'",
        "ddcal.integrations.torchmetrics ddcal.integrations.torchmetrics needs torchmetrics: "
        "pip install 'ddcal[torchmetrics]'",
    ]


def test_the_readme_quick_start_runs_from_the_installed_wheel(
    installed: Installed, fashion_mnist, quick_start: str, tmp_path: Path
) -> None:
    script = tmp_path / "quick_start.py"
    script.write_text(quick_start)
    done = _run([installed.python, script], cwd=tmp_path, env=_clean_env())
    assert len(re.findall(r"^test ECE (raw|MTS): \d+\.\d+%$", done.stdout, re.MULTILINE)) == 2
    assert (tmp_path / "scaler.pt").is_file()
