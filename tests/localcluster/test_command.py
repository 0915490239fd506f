"""`capguard localcluster`'s command line: a user's mistake is one line naming the flag and
what to change, exit code 2, as every capguard subcommand says it; good flags serve.

Each case runs the real command in a process, both as `capguard localcluster` (through
the click group) and as `python -m capguard.localcluster`.
"""
from __future__ import annotations

import pathlib
import signal
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
ENTRY_POINTS = {"capguard": ["capguard.cli", "localcluster"],
                "module": ["capguard.localcluster"]}


def _localcluster(entry: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *ENTRY_POINTS[entry], *flags],
                          capture_output=True, text=True, check=False, timeout=60)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize(("flags", "says"), [
    (["--port", "http"], "argument --port: 'http' is not a port; give 0 to 65535"),
    (["--port=70000"], "argument --port: '70000' is not a port; give 0 to 65535"),
    (["--crds", "no-such-folder"],
     "argument --crds: 'no-such-folder' is not a folder; give the folder that holds"),
    (["--kubeconfig", "no-such-folder/kubeconfig"],
     "argument --kubeconfig: the folder of 'no-such-folder/kubeconfig' does not exist"),
    (["--prot", "8080"],
     "unrecognized arguments: --prot 8080; capguard localcluster --help lists the flags"),
    (["--host"], "argument --host: expected one argument; capguard localcluster --help"),
])
def test_a_mistake_is_one_line_naming_the_flag(entry: str, flags: list[str], says: str) -> None:
    done = _localcluster(entry, *flags)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith(f"capguard localcluster: {says}"), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr


def test_good_flags_serve_until_sigterm(tmp_path: pathlib.Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    with subprocess.Popen(
        [sys.executable, "-m", *ENTRY_POINTS["capguard"], "--port", "0",
         "--crds", str(ROOT / "crds"), "--kubeconfig", str(kubeconfig),
         "--audit-log", str(tmp_path / "audit.jsonl")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as served:
        assert served.stdout is not None
        first = served.stdout.readline()
        served.send_signal(signal.SIGTERM)
        _, errors = served.communicate(timeout=30)
    assert first.startswith("capguard localcluster serving at http://127.0.0.1:"), errors
    assert served.returncode == 0, errors
    assert kubeconfig.is_file()
