"""`capguard localcluster`: serve in the foreground until interrupted.

A user's mistake on its command line is reported as every `capguard` subcommand reports
one: one line naming the flag and what to change, exit code 2. It stays on argparse
rather than capguard's click helpers, so this package imports nothing else of capguard.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import pathlib
import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import yaml

from capguard.localcluster import authz, cluster, errors


class _OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, not its usage block."""

    def error(self, message: str) -> NoReturn:
        # argparse's own messages name the flag; ours (the types below) also say what to do.
        hint = "" if ";" in message else f"; {self.prog} --help lists the flags"
        self.exit(2, f"{self.prog}: {message}{hint}\n")


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a port; give 0 to 65535 (0 picks a free one)")
    return int(text)


def _folder(text: str) -> str:
    if not pathlib.Path(text).is_dir():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a folder; give the folder that holds the CRDs' YAML files")
    return text


def _in_a_folder(text: str) -> str:
    """A file to write: its folder must exist (the server would fail at start otherwise)."""
    if not pathlib.Path(text).resolve().parent.is_dir():
        raise argparse.ArgumentTypeError(
            f"the folder of {text!r} does not exist; create it or choose another path")
    return text


def _readable(text: str) -> str:
    if not pathlib.Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is not a file; give a readable file")
    return text


def parser() -> argparse.ArgumentParser:
    result = _OneLineParser(
        prog="capguard localcluster",
        description="Serve an embedded Kubernetes API server for tests, demos and kubectl.")
    result.add_argument("--host", default="127.0.0.1", help="address to listen on")
    result.add_argument("--port", type=_port, default=0, help="port; 0 picks a free one")
    result.add_argument("--kubeconfig", type=_in_a_folder, default=None,
                        help="where to write a kubeconfig (default: a temporary file)")
    result.add_argument("--crds", type=_folder, default=None,
                        help="directory of CRD YAML files to preload")
    result.add_argument("--audit-log", type=_in_a_folder, default=None,
                        help="append every request as a JSON line to this file "
                             "(a watch when its stream opens)")
    result.add_argument("--no-namespace-controller", dest="namespace_controller",
                        action="store_false",
                        help="leave deleted namespaces Terminating until /finalize is called, "
                             "and new ones without a default ServiceAccount, as a bare "
                             "kube-apiserver does (default: empty and finalize them, and give "
                             "each its default ServiceAccount)")
    result.add_argument("--token-auth-file", type=_readable, default=None,
                        help="authenticate bearer tokens from this file, as kube-apiserver's "
                             "flag of that name: token,user,uid,\"group1,group2\" a line "
                             "(the written kubeconfig gets an admin token of its own)")
    result.add_argument("--authorization-mode", choices=("AlwaysAllow", "RBAC"),
                        default=None,
                        help="RBAC: authorize every request by the Roles, ClusterRoles and "
                             "bindings served, as they change (kubectl apply them); "
                             "AlwaysAllow (the default without --rbac): allow every request")
    result.add_argument("--rbac", type=_readable, default=None,
                        help="create the Roles, ClusterRoles and bindings in this YAML file "
                             "(kubectl kustomize's output, say; other kinds are skipped) at "
                             "start, with the namespaces they name, and authorize by RBAC")
    result.add_argument("--tls-cert-file", type=_readable, default=None,
                        help="serve HTTPS with this PEM certificate (and its chain); the "
                             "written kubeconfig trusts it. kubectl sends a token only over "
                             "HTTPS")
    result.add_argument("--tls-private-key-file", type=_readable, default=None,
                        help="the PEM private key of --tls-cert-file")
    return result


def _security(args: argparse.Namespace) -> dict[str, Any]:
    """The cluster's TLS, tokens and policy from the flags, or exit 2 saying what is
    wrong."""
    found: dict[str, Any] = {}
    if (args.tls_cert_file is None) != (args.tls_private_key_file is None):
        parser().exit(2, "capguard localcluster: --tls-cert-file and --tls-private-key-file "
                         "go together; give both, or neither for plain HTTP\n")
    if args.tls_cert_file is not None:
        found["tls"] = (args.tls_cert_file, args.tls_private_key_file)
    if args.token_auth_file is not None:
        found["tokens"] = _read("--token-auth-file", args.token_auth_file, authz.read_tokens)
    if args.rbac is not None:
        if args.authorization_mode == "AlwaysAllow":
            parser().exit(2, "capguard localcluster: --rbac authorizes by RBAC; drop "
                             "--authorization-mode=AlwaysAllow or the --rbac file\n")
        found["rbac"] = _read("--rbac", args.rbac, _policy)
    elif args.authorization_mode == "RBAC":
        found["rbac"] = authz.Policy()
    return found


def _read(flag: str, path: str, parse: Callable[[str], Any]) -> Any:
    """A flag's file parsed, or exit 2 with one line naming the flag and the problem."""
    try:
        return parse(pathlib.Path(path).read_text(encoding="utf-8"))
    except (ValueError, yaml.YAMLError) as error:
        detail = " ".join(str(error).split())
        parser().exit(2, f"capguard localcluster: {flag}: {detail}\n")


def _policy(text: str) -> authz.Policy:
    policy = authz.Policy.of(yaml.safe_load_all(text))
    if not policy.objects:
        raise ValueError("the file holds no Role, ClusterRole, RoleBinding or "
                         "ClusterRoleBinding; give the RBAC objects to authorize by")
    return policy


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    security = _security(args)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args, security))
    return 0


async def _serve(args: argparse.Namespace, security: dict[str, Any]) -> None:
    try:
        local = cluster.LocalCluster(host=args.host, port=args.port,
                                     kubeconfig_path=args.kubeconfig, audit_log=args.audit_log,
                                     audit_buffer=0,   # nothing reads it here; --audit-log does
                                     namespace_controller=args.namespace_controller,
                                     **security)
    except ValueError as error:   # an object of the --rbac file the server refuses
        detail = " ".join(str(error).split())
        parser().exit(2, f"capguard localcluster: --rbac: {detail}\n")
    if args.crds is not None:
        try:
            local.load_crds(args.crds)
        except errors.ApiError as error:   # a CRD the server refuses, as kubectl apply would
            detail = " ".join(str(error).split())
            parser().exit(2, f"capguard localcluster: --crds: {' '.join(error.__notes__)}: "
                             f"{detail}\n")
    async with local:
        # What startup made (modules, the CRDs' compiled schemas) lives as long as the
        # process: keep it out of full collections, which otherwise stall one request
        # for tens of milliseconds (bench/bench_localcluster.py: ~35 ms with 10,000
        # objects). A higher gen0 threshold was measured too and did not help.
        gc.freeze()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signum, stop.set)
        # Announced once a SIGTERM would stop it cleanly: whoever waits for this line
        # may signal it at once.
        print(f"capguard localcluster serving at {local.url}", flush=True)
        print(f"export KUBECONFIG={local.kubeconfig_path}", flush=True)
        await stop.wait()
    print("capguard localcluster stopped", file=sys.stderr, flush=True)
