"""Content negotiation: which representation an `Accept` header asks for.

kubectl 1.27+ first asks for aggregated discovery (`apidiscovery.k8s.io`), which the
1.24 reference server did not know (011). This server follows newer ones (1.30+): it
serves `APIGroupDiscoveryList` in v2, and in v2beta1 for older clients, at `/api` and
`/apis`, and falls back to the plain documents when the client also accepts them.

The OpenAPI routes negotiate as kube-openapi does (`choose_openapi`): JSON, or for v2
also gnostic protobuf, whichever comes first in the client's preference (`*/*` and no
`Accept` mean JSON); 406 when the client takes neither.
"""
from __future__ import annotations

import enum
from typing import Final

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


OPENAPI_JSON: Final = "application/json"


def choose_openapi(accept: str | None, *, protobuf: tuple[str, ...] = ()) -> str:
    """The media type to answer an OpenAPI request with: `OPENAPI_JSON` or the first of
    `protobuf` (the others are older spellings of it), following the client's q-values."""
    ranges = _media_ranges(accept or "*/*")

    def quality(item: tuple[str, dict[str, str]]) -> float:
        try:
            return float(item[1].get("q", "1"))
        except ValueError:
            return 0.0
    for media, _params in sorted(ranges, key=quality, reverse=True):   # stable
        if quality((media, _params)) <= 0:
            continue
        if media in (OPENAPI_JSON, "*/*", "application/*"):
            return OPENAPI_JSON
        if protobuf and media in protobuf:
            return protobuf[0]
    raise errors.not_acceptable()
