"""A griffe extension for two habits of ddcal's Google-style docstrings.

* Sphinx roles (``:func:`ddcal.metrics.calibration_error```, ``:class:`~ddcal.ConvNet```)
  become autorefs cross-references, so ``mkdocs build --strict`` fails on a
  target that does not exist. A short name is looked up from the documented
  object outwards, as Python would; ``~`` shows the last part only. A
  target that is private (``ddcal._io``, ``_check``) stays plain code: it has
  no reference entry.
* An entry naming several arguments (``num_masks, seed: as in ...``) becomes
  one entry per name with the same description, which griffe can match to the
  signature.

Used by ``mkdocs.yml`` only; nothing in ``ddcal`` imports it.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(
    r":(?:func|class|meth|attr|mod|data|exc|obj|const):`(?P<tilde>~?)(?P<target>[^`]+)`"
)
_SECTION = re.compile(
    r"^\s*(?:Args|Arguments|Parameters|Attributes|Other Parameters|Keyword Args):\s*$"
)
_GROUPED = re.compile(r"^(?P<indent>\s+)(?P<names>\w+(?:, \w+)+)(?P<rest>( \([^)]*\))?:.*)$")


def _qualified(obj: griffe.Object, target: str) -> str:
    """``target`` as a full path: its first name looked up from ``obj`` outwards.

    Inherited members count (``:meth:`state_dict``` on a subclass); a name not
    found is returned as it is, for autorefs to resolve or report.
    """
    first, dot, rest = target.partition(".")
    scope: griffe.Object | None = obj
    while scope is not None:
        members = scope.all_members if isinstance(scope, griffe.Class) else scope.members
        if first in members:
            member = members[first]
            path = member.target_path if isinstance(member, griffe.Alias) else member.path
            return f"{path}{dot}{rest}"
        scope = scope.parent
    return target


def _cross_references(obj: griffe.Object, text: str) -> str:
    """``text`` with every Sphinx role of ``obj``'s docstring as a cross-reference or code."""

    def replace(match: re.Match[str]) -> str:
        target = match["target"].strip().removesuffix("()")
        title = target.rsplit(".", 1)[-1] if match["tilde"] else target
        path = _qualified(obj, target)
        if any(part.startswith("_") and not part.startswith("__") for part in path.split(".")):
            return f"`{title}`"
        return f"[`{title}`][{path}]"

    return _ROLE.sub(replace, text)


def _indent(line: str) -> int:
    """The number of leading spaces of ``line``."""
    return len(line) - len(line.lstrip())


def _split_grouped_entries(text: str) -> str:
    """Every ``a, b: description`` entry of an Args or Attributes section as one per name."""
    lines, out = text.splitlines(), []
    entry_indent: int | None = None  # of the entries of the section we are in, if any
    in_section = False
    for index, line in enumerate(lines):
        if _SECTION.match(line):
            in_section, entry_indent = True, None
            out.append(line)
            continue
        if in_section and line.strip():
            entry_indent = _indent(line) if entry_indent is None else entry_indent
            in_section = _indent(line) >= entry_indent
        grouped = _GROUPED.match(line) if in_section else None
        if grouped is None or _indent(line) != entry_indent:
            out.append(line)
            continue
        continuation = []
        for following in lines[index + 1 :]:
            if following.strip() and _indent(following) <= _indent(line):
                break
            continuation.append(following)
        *first_names, last_name = grouped["names"].split(", ")
        for name in first_names:
            out += [f"{grouped['indent']}{name}{grouped['rest']}", *continuation]
        out.append(f"{grouped['indent']}{last_name}{grouped['rest']}")
    return "\n".join(out)


class DocstringHabits(griffe.Extension):
    """Rewrite every docstring before it is parsed (see the module docstring)."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite ``obj``'s docstring in place, once the object tree is complete."""
        if obj.docstring is not None:
            value = _split_grouped_entries(obj.docstring.value)
            obj.docstring.value = _cross_references(obj, value)
