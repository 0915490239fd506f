"""`capguard localcluster`: serve in the foreground until interrupted."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import sys

from capguard.localcluster import cluster


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(
        prog="capguard localcluster",
        description="Serve an embedded Kubernetes API server for tests, demos and kubectl.")
    result.add_argument("--host", default="127.0.0.1", help="address to listen on")
    result.add_argument("--port", type=int, default=0, help="port; 0 picks a free one")
    result.add_argument("--kubeconfig", default=None,
                        help="where to write a kubeconfig (default: a temporary file)")
    result.add_argument("--crds", default=None, help="directory of CRD YAML files to preload")
    result.add_argument("--audit-log", default=None,
                        help="append every request as a JSON line to this file "
                             "(a watch when its stream opens)")
    result.add_argument("--no-namespace-controller", dest="namespace_controller",
                        action="store_false",
                        help="leave deleted namespaces Terminating until /finalize is called, "
                             "as a bare kube-apiserver does (default: empty and finalize them)")
    return result


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


async def _serve(args: argparse.Namespace) -> None:
    local = cluster.LocalCluster(host=args.host, port=args.port, crds_dir=args.crds,
                                 kubeconfig_path=args.kubeconfig, audit_log=args.audit_log,
                                 audit_buffer=0,   # nothing reads it here; --audit-log does
                                 namespace_controller=args.namespace_controller)
    async with local:
        # What startup made (modules, the CRDs' compiled schemas) lives as long as the
        # process: keep it out of full collections, which otherwise stall one request
        # for tens of milliseconds (bench/bench_localcluster.py: ~35 ms with 10,000
        # objects). A higher gen0 threshold was measured too and did not help.
        gc.freeze()
        print(f"capguard localcluster serving at {local.url}", flush=True)
        print(f"export KUBECONFIG={local.kubeconfig_path}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    print("capguard localcluster stopped", file=sys.stderr, flush=True)
