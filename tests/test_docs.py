"""The documentation site builds with ``--strict`` and documents every public name.

One build (about 10 s) into a temporary folder, then its output is read:
the objects inventory (``objects.inv``, every documented identifier) against
the ``__all__`` of every public module, the API index against the exports of
``ddcal`` and its subpackages, the embedded figure, and the search index.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import re
import subprocess
import sys
import zlib
from pathlib import Path
from types import ModuleType

import pytest

import ddcal

pytest.importorskip("mkdocs")

ROOT = Path(__file__).resolve().parents[1]
EXPORTING_PACKAGES = (
    "ddcal",
    "ddcal.data",
    "ddcal.distill",
    "ddcal.pipeline",
    "ddcal.integrations.lightning",
    "ddcal.integrations.torchmetrics",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(folder)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING")]
    assert done.returncode == 0, "\n".join(warnings) or done.stderr[-3000:]
    return folder


def _inventory(site: Path) -> set[str]:
    """The identifiers of the site's Sphinx inventory (four header lines, then zlib)."""
    body = zlib.decompress((site / "objects.inv").read_bytes().split(b"\n", 4)[4]).decode()
    return {line.split(" ", 1)[0] for line in body.splitlines()}


def _defined_here(module: ModuleType) -> list[str]:
    """The public classes and functions a module without ``__all__`` defines itself."""
    return [
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == module.__name__
    ]


def _public_names() -> list[str]:
    """Every public module and its names: its ``__all__``, else what it defines.

    A module without ``__all__`` inside a package that has one
    (``ddcal.distill.dc``) is an implementation module: its package's
    ``__all__`` says what of it is public.
    """
    names = [f"ddcal.{name}" for name in ddcal.__all__ if name != "__version__"]
    for info in pkgutil.walk_packages(ddcal.__path__, "ddcal."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        module = importlib.import_module(info.name)
        package = sys.modules[info.name.rpartition(".")[0]]
        exported = getattr(module, "__all__", None)
        if exported is None and package is not ddcal and hasattr(package, "__all__"):
            continue
        names.append(info.name)
        names += [f"{info.name}.{name}" for name in exported or _defined_here(module)]
    return names


def test_every_public_name_has_a_reference_entry(site: Path) -> None:
    documented = _inventory(site)
    missing = [name for name in _public_names() if name not in documented]
    assert missing == [], "add them to a page of docs/reference/ (and mkdocs.yml's nav)"


def test_the_api_index_lists_every_exported_name() -> None:
    index = (ROOT / "docs" / "reference" / "index.md").read_text(encoding="utf-8")
    listed = re.findall(r"^\| \[`([\w.]+)`\]\[", index, flags=re.MULTILINE)
    exported = [
        f"{package}.{name}"
        for package in EXPORTING_PACKAGES
        for name in importlib.import_module(package).__all__
        if name != "__version__"
    ]
    assert sorted(listed) == sorted(exported)


def test_every_reference_page_is_in_the_menu() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = sorted(path.name for path in (ROOT / "docs" / "reference").glob("*.md"))
    assert [page for page in pages if f"reference/{page}" not in config] == []


def test_the_site_embeds_the_demo_figure_and_has_search(site: Path) -> None:
    why = (site / "why" / "index.html").read_text(encoding="utf-8")
    assert 'src="../images/demo_reliability.png"' in why
    assert (site / "images" / "demo_reliability.png").read_bytes().startswith(b"\x89PNG")
    search = json.loads((site / "search" / "search_index.json").read_text(encoding="utf-8"))
    titles = {entry["title"] for entry in search["docs"]}
    assert "MaskedTemperatureScaler" in titles
    assert "Quick start" in titles
