"""Small metadata helpers: timestamps, conditions, uids, generated names, name validation."""
from __future__ import annotations

import datetime
import random
import re
import uuid
from typing import Any, Final

# generateName appends five characters from this alphabet, like the real server
# (k8s.io/apiserver/pkg/storage/names: consonants and digits, no vowels to avoid words).
_SUFFIX_ALPHABET: Final = "bcdfghjklmnpqrstvwxz2456789"
_DNS_SUBDOMAIN: Final = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED_NAME: Final = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE: Final = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


# The fields of metav1.ObjectMeta as 1.30 decodes them (clusterName went in 1.25).
OBJECT_META_FIELDS: Final = frozenset((
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels",
    "annotations", "ownerReferences", "finalizers", "managedFields"))


def unknown_metadata(metadata: dict[str, Any]) -> list[str]:
    """Paths of the keys ObjectMeta does not have, as strict decoding names them (384)."""
    return [f"metadata.{key}" for key in metadata if key not in OBJECT_META_FIELDS]


def known_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """The metadata an ObjectMeta round trip keeps: unknown keys are dropped (384)."""
    return {key: value for key, value in metadata.items() if key in OBJECT_META_FIELDS}


def now_rfc3339() -> str:
    # metav1.Time serializes at whole seconds.
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def settled_conditions(previous: Any, wanted: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`wanted`, where a condition whose status, reason and message are unchanged keeps
    its old transition time (and is the old dict), so an object settles."""
    current = {c.get("type"): c for c in previous or [] if isinstance(c, dict)}
    settled = []
    for condition in wanted:
        before = current.get(condition["type"])
        if before and all(before.get(k) == condition[k] for k in ("status", "reason", "message")):
            condition = before
        settled.append(condition)
    return settled


def new_uid() -> str:
    return str(uuid.uuid4())


def generated_name(prefix: str) -> str:
    # The real server truncates the prefix so that the result stays within 63 characters.
    return prefix[:58] + "".join(random.choices(_SUFFIX_ALPHABET, k=5))


def truncate_time(value: Any) -> Any:
    """A metav1.Time field keeps whole seconds: 03:04:05.123456Z becomes 03:04:05Z (102)."""
    if not isinstance(value, str) or "." not in value:
        return value
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return parsed.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time(value: Any) -> Any:
    """A metav1.MicroTime keeps microseconds and is written in UTC with a Z (103)."""
    if not isinstance(value, str):
        return value
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def name_problems(name: str, *, dns_label: bool = False) -> list[str]:
    """Why a name is not a valid object name, in the real server's words; empty if valid."""
    if dns_label:
        if len(name) > 63:
            return ["must be no more than 63 characters"]
        if not _DNS_LABEL.match(name):
            return ["a lowercase RFC 1123 label must consist of lower case alphanumeric "
                    "characters or '-', and must start and end with an alphanumeric character "
                    "(e.g. 'my-name',  or '123-abc', regex used for validation is "
                    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')"]
        return []
    if len(name) > 253:
        return ["must be no more than 253 characters"]
    if not _DNS_SUBDOMAIN.match(name):
        return ["a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                "characters, '-' or '.', and must start and end with an alphanumeric character "
                "(e.g. 'example.com', regex used for validation is "
                "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"]
    return []


def label_problems(labels: Any) -> list[tuple[str, str, str]]:
    """(field, value, message) for each label key or value the server would refuse."""
    if labels is None:
        return []
    if not isinstance(labels, dict):
        return [("metadata.labels", "", "must be a map of strings")]
    problems = []
    for key, value in labels.items():
        name = key.rsplit("/", 1)[-1]
        if not name or len(name) > 63 or not _QUALIFIED_NAME.match(name):
            problems.append(("metadata.labels", key, "name part must consist of alphanumeric "
                             "characters, '-', '_' or '.', and must start and end with an "
                             "alphanumeric character"))
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            problems.append(("metadata.labels", str(value), "a valid label must be an empty "
                             "string or consist of alphanumeric characters, '-', '_' or '.', "
                             "and must start and end with an alphanumeric character"))
    return problems
