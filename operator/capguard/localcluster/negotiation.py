"""Content negotiation: which representation an `Accept` header asks for.

kubectl 1.27+ first asks for aggregated discovery (`apidiscovery.k8s.io`), which the
1.24 reference server did not know (011). This server follows newer ones (1.30+): it
serves `APIGroupDiscoveryList` in v2, and in v2beta1 for older clients, at `/api` and
`/apis`, and falls back to the plain documents when the client also accepts them.
"""
from __future__ import annotations

import enum

from capguard.localcluster import errors


class Format(enum.Enum):
    JSON = "json"
    YAML = "yaml"
    TABLE = "table"
    DISCOVERY_V2 = "v2"
    DISCOVERY_V2BETA1 = "v2beta1"


def _media_ranges(accept: str) -> list[tuple[str, dict[str, str]]]:
    ranges = []
    for part in accept.split(","):
        pieces = [piece.strip() for piece in part.split(";")]
        params = {}
        for piece in pieces[1:]:
            key, _, value = piece.partition("=")
            params[key.strip()] = value.strip()
        ranges.append((pieces[0].lower(), params))
    return ranges


def choose(accept: str | None, *, discovery: bool = False, table: bool = False) -> Format:
    """The first representation in the client's order that this endpoint can produce."""
    if not accept:
        return Format.JSON
    for media, params in _media_ranges(accept):
        chosen = _match(media, params, discovery=discovery, table=table)
        if chosen is not None:
            return chosen
    raise errors.not_acceptable()


def _match(media: str, params: dict[str, str], *, discovery: bool, table: bool
           ) -> Format | None:
    kind = params.get("as")
    if media not in ("application/json", "application/yaml", "*/*", "application/*"):
        return None
    if kind is None:
        return Format.YAML if media == "application/yaml" else Format.JSON
    if (kind == "APIGroupDiscoveryList" and discovery
            and params.get("g") == "apidiscovery.k8s.io"):
        return {"v2": Format.DISCOVERY_V2,
                "v2beta1": Format.DISCOVERY_V2BETA1}.get(params.get("v", ""))
    if kind == "Table" and table and params.get("g") == "meta.k8s.io":
        return Format.TABLE
    return None
