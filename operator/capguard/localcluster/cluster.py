"""`LocalCluster`: the server as an async context manager, or in a background thread for
synchronous code (kubectl-driven tests, the demo)."""
from __future__ import annotations

import asyncio
import collections
import os
import pathlib
import secrets
import shutil
import ssl
import tempfile
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import IO, Any, Final

import yaml
from aiohttp import web

from capguard.localcluster import (
    authz,
    crds,
    errors,
    kinds,
    kubeconfig,
    namespaces,
    objects,
    resources,
    server,
    store,
)
from capguard.localcluster import rbac as rbac_objects
from capguard.localcluster import tokens as tokens_issued

# Namespaces every cluster starts with; Kopf and kubectl expect `default` to exist.
INITIAL_NAMESPACES: Final = ("default", "kube-system", "kube-public", "kube-node-lease")
# The user of the written kubeconfig where requests are authenticated (kind's name).
ADMIN: Final = "kubernetes-admin"


class LocalCluster:
    """An embedded Kubernetes API server on loopback.

        async with LocalCluster(crds_dir="crds") as cluster:
            os.environ["KUBECONFIG"] = str(cluster.kubeconfig_path)
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0,
                 crds_dir: str | os.PathLike[str] | None = None,
                 kubeconfig_path: str | os.PathLike[str] | None = None,
                 audit_log: str | os.PathLike[str] | None = None,
                 audit_buffer: int = server.DEFAULT_AUDIT_BUFFER,
                 window: int = store.DEFAULT_WINDOW,
                 namespace_controller: bool = True,
                 tokens: Mapping[str, authz.User] | None = None,
                 rbac: authz.Policy | None = None,
                 tls: tuple[str | os.PathLike[str], str | os.PathLike[str]] | None = None,
                 ) -> None:
        """`namespace_controller=False` leaves deleted Namespaces Terminating until their
        `/finalize` is called, as a bare kube-apiserver without controllers does (199).

        `.audit` keeps the last `audit_buffer` requests (0 keeps none); `audit_log` is a
        file that gets every request as a JSON line, however many.

        `tokens` (a static token file's users) or `rbac` turns on authentication, and
        `rbac` RBAC authorization (`authz`) by the Roles, ClusterRoles and bindings served
        (`rbac`'s objects are created at start, with the namespaces they name; later
        ones are applied like any object); the kubeconfig written then carries a token of
        its own for `kubernetes-admin` in `system:masters`, as kind's does. A
        `rbac` object the server refuses is a ValueError naming it.

        `tls`: (certificate, key) files to serve HTTPS with, as kube-apiserver's
        `--tls-cert-file` and `--tls-private-key-file`; the kubeconfig then trusts the
        certificate file. kubectl sends a bearer token only over HTTPS."""
        self.host, self.port = host, port
        self.crds_dir = crds_dir
        self._kubeconfig_request = kubeconfig_path
        self._audit_log = audit_log
        self.tls = tls
        self.db = store.Store(window=window)
        registry = resources.Registry()
        for rt in resources.BUILTINS:
            registry.add(rt)
        self.api = objects.Objects(registry=registry, db=self.db)
        kinds.install(self.api)
        self.crd_controller = crds.Controller(self.api)
        self.namespace_controller = (namespaces.Controller(self.api) if namespace_controller
                                     else None)
        if namespace_controller:   # kube-controller-manager's, as the one above
            tokens_issued.DefaultAccounts(self.api)
        self.rbac = rbac_objects.Served(self.api)
        self.tokens = tokens_issued.Issuer(self.api)
        self._audit_file: IO[str] | None = None
        self.admin_token = kubeconfig.TOKEN
        authorizer = None
        if tokens is not None or rbac is not None:
            self.admin_token = secrets.token_hex(16)
            self.rbac.enforcing = rbac is not None
            authorizer = authz.Authorizer(
                tokens={**(tokens or {}), self.admin_token: authz.User(
                    ADMIN, (authz.MASTERS, authz.AUTHENTICATED))},
                policy=self.rbac.policy if rbac is not None else None,
                issued=self.tokens.user)
        self.server = server.Server(api=self.api, server_address=lambda: self.address,
                                    audit_buffer=audit_buffer, authorizer=authorizer,
                                    issuer=self.tokens)
        self._runner: web.AppRunner | None = None
        self._tempdir: str | None = None
        self.kubeconfig_path: pathlib.Path | None = None
        for name in INITIAL_NAMESPACES:
            self.apply(resources.NAMESPACES, {"apiVersion": "v1", "kind": "Namespace",
                                              "metadata": {"name": name}})
        if rbac is not None:
            self.rbac.seed(rbac, self.apply)

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self) -> LocalCluster:
        if self._audit_log is not None:
            self._audit_file = open(self._audit_log, "a", encoding="utf-8")  # noqa: SIM115
            self.server.audit_file = self._audit_file
        if self.crds_dir is not None:
            self.load_crds(self.crds_dir)
        self._runner = web.AppRunner(self.server.application(), access_log=None,
                                     handle_signals=False)
        await self._runner.setup()
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*self.tls)
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024,
                           ssl_context=context)
        await site.start()
        if self.namespace_controller is not None:
            self.namespace_controller.start()
        # The port the OS picked when asked for 0; aiohttp keeps the listening server private.
        listening: Any = site._server
        self.port = listening.sockets[0].getsockname()[1]
        path = self._kubeconfig_request
        if path is None:
            self._tempdir = tempfile.mkdtemp(prefix="capguard-localcluster-")
            path = pathlib.Path(self._tempdir) / "kubeconfig"
        self.kubeconfig_path = self.write_kubeconfig(path)
        return self

    async def stop(self) -> None:
        if self.namespace_controller is not None:
            await self.namespace_controller.stop()
        self.db.close_watchers()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._audit_file is not None:
            self._audit_file.close()
            self._audit_file = None
        if self._tempdir is not None:
            shutil.rmtree(self._tempdir, ignore_errors=True)
            self._tempdir = None

    async def __aenter__(self) -> LocalCluster:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    # ---- what clients need ----------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}"

    @property
    def audit(self) -> collections.deque[dict[str, Any]]:
        """The last `audit_buffer` requests, oldest first: method, path, query, verb, code,
        resource, namespace... (see `server`); a watch appears when it opens."""
        return self.server.audit

    def write_kubeconfig(self, path: str | os.PathLike[str]) -> pathlib.Path:
        authority = None if self.tls is None else pathlib.Path(self.tls[0]).read_bytes()
        return kubeconfig.write(path, self.url, token=self.admin_token, authority=authority)

    # ---- seeding without HTTP ----------------------------------------------------------------

    def apply(self, rt: resources.ResourceType, obj: dict[str, Any], *,
              field_validation: str = "Warn") -> dict[str, Any]:
        """Create an object (or, if it exists, leave it) from the server's own thread."""
        namespace = (obj.get("metadata") or {}).get("namespace", "") if rt.namespaced else ""
        try:
            reply = self.api.create(rt, obj, namespace=namespace, options=objects.WriteOptions(
                field_validation=field_validation))
        except errors.ApiError as error:
            if error.code != 409:
                raise
            return self.api.get(rt, namespace=namespace, name=obj["metadata"]["name"]).thaw()
        assert reply.entry is not None
        return reply.entry.thaw()

    def load_crds(self, directory: str | os.PathLike[str]) -> list[str]:
        """Create every CustomResourceDefinition found in the YAML files of a directory,
        refusing unknown fields as `kubectl apply` has a real server refuse them."""
        loaded = []
        for path in sorted(pathlib.Path(directory).glob("*.y*ml")):
            for document in yaml.safe_load_all(path.read_text()):
                if isinstance(document, dict) and document.get("kind") == (
                        "CustomResourceDefinition"):
                    try:
                        created = self.apply(resources.CRDS, document, field_validation="Strict")
                    except errors.ApiError as error:
                        error.add_note(str(path))
                        raise
                    loaded.append(created["metadata"]["name"])
        return loaded

    @classmethod
    def start_in_thread(cls, **kwargs: Any) -> ThreadedCluster:
        """Run a cluster on its own event loop in a daemon thread; `.stop()` ends it."""
        return ThreadedCluster(cls(**kwargs))


class ThreadedCluster:
    """A `LocalCluster` serving from a background thread, for synchronous callers.

        with LocalCluster.start_in_thread(crds_dir="crds") as cluster:
            subprocess.run(["kubectl", "--kubeconfig", cluster.kubeconfig_path, ...])
    """

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="capguard-localcluster",
                                        daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.cluster.start())
        except BaseException as error:
            self._error = error
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self.cluster.stop())
        self._loop.close()

    @property
    def url(self) -> str:
        return self.cluster.url

    @property
    def kubeconfig_path(self) -> pathlib.Path:
        assert self.cluster.kubeconfig_path is not None
        return self.cluster.kubeconfig_path

    @property
    def audit(self) -> collections.deque[dict[str, Any]]:
        return self.cluster.audit

    def call(self, function: Any, *args: Any) -> Any:
        """Run `function(*args)` on the server's loop (its state is not thread-safe)."""
        async def invoke() -> Any:
            return function(*args)
        return asyncio.run_coroutine_threadsafe(invoke(), self._loop).result()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def __enter__(self) -> ThreadedCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
