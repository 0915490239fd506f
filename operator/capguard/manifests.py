"""capguard's CustomResourceDefinitions, wherever capguard is installed.

`crds/` at the repository root is their one source (kustomize, the tests and the docs
read it there). A wheel carries them as `capguard/crds/`, copied in by the build step in
`setup.py`, so `capguard crds` and `capguard demo` work without a checkout; from a
checkout (an editable install) the root's `crds/` is read in place.
"""

from __future__ import annotations

import pathlib
from typing import Final

PACKAGE: Final = pathlib.Path(__file__).resolve().parent


class ManifestsMissing(LookupError):
    """This install carries no CRDs: a wheel built without the repository's crds/."""


def crds_dir() -> pathlib.Path:
    """The folder holding the CRDs' YAML files: the wheel's, else the checkout's."""
    checkout = PACKAGE.parents[1]
    for folder in (PACKAGE / "crds", checkout / "crds"):
        if any(folder.glob("*.yaml")):
            return folder
    raise ManifestsMissing(
        f"no CRDs in {PACKAGE / 'crds'}: this capguard was built without them; build the "
        "wheel from the repository root (pip wheel .), which copies crds/*.yaml into it")


def crd_files() -> list[pathlib.Path]:
    """The CRDs' YAML files, one CRD each, in name order."""
    return sorted(crds_dir().glob("*.yaml"))


def crds_stream() -> str:
    """Every CRD as one multi-document YAML stream, each file's text as written."""
    return "".join(f"---\n{path.read_text(encoding='utf-8')}" for path in crd_files())
