"""Talking to the embedded server over HTTP about the reference suite's widgets."""
from __future__ import annotations

import json
from typing import Any

import aiohttp

from capguard.localcluster import LocalCluster

WIDGETS = "/apis/widgets.example.dev/v1/namespaces/default/widgets"
JSON = {"Content-Type": "application/json"}
MERGE = {"Content-Type": "application/merge-patch+json"}


def widget(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "widgets.example.dev/v1", "kind": "Widget",
            "metadata": {"name": name}, "spec": {"size": "small", **spec}}


async def call(cluster: LocalCluster, method: str, path: str, body: Any = None, *,
               headers: dict[str, str] | None = None) -> tuple[int, Any, aiohttp.ClientResponse]:
    data = body if isinstance(body, bytes | str) or body is None else json.dumps(body)
    async with aiohttp.ClientSession() as session, session.request(
            method, cluster.url + path, data=data, headers=headers or JSON) as response:
        raw = await response.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw.decode()
        return response.status, parsed, response
