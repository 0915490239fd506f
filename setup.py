"""The build step pyproject.toml cannot declare: crds/*.yaml, the CRDs' one source at the
repository root, go into the wheel as package data (capguard/crds/), without a second
copy in git. An editable install reads the checkout's crds/ in place (capguard.manifests).
"""

import pathlib
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

CRDS = pathlib.Path(__file__).resolve().parent / "crds"


class BuildPyWithCrds(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        sources = sorted(CRDS.glob("*.yaml"))
        if not sources:
            raise SystemExit(f"no CRDs in {CRDS}: build capguard from the repository root")
        target = pathlib.Path(self.build_lib, "capguard", "crds")
        target.mkdir(parents=True, exist_ok=True)
        for source in sources:
            shutil.copyfile(source, target / source.name)


setup(cmdclass={"build_py": BuildPyWithCrds})
