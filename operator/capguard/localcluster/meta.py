"""Small metadata helpers: timestamps, conditions, uids, generated names, name validation."""
from __future__ import annotations

import datetime
import random
import re
import uuid
from typing import Any, Final

from capguard.localcluster import gotypes

# generateName appends five characters from this alphabet, like the real server
# (k8s.io/apiserver/pkg/storage/names: consonants and digits, no vowels to avoid words).
_SUFFIX_ALPHABET: Final = "bcdfghjklmnpqrstvwxz2456789"
_DNS_SUBDOMAIN: Final = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_1035: Final = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED_NAME: Final = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE: Final = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


# The fields of metav1.ObjectMeta (its Go type: `gotypes.OBJECT_META`).
OBJECT_META_FIELDS: Final = frozenset(gotypes.OBJECT_META.field_types())


def unknown_metadata(metadata: dict[str, Any]) -> list[str]:
    """Paths of the keys ObjectMeta does not have, as strict decoding names them (384)."""
    return [f"metadata.{key}" for key in metadata if key not in OBJECT_META_FIELDS]


def known_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """The metadata an ObjectMeta round trip keeps: unknown keys are dropped (384)."""
    return {key: value for key, value in metadata.items() if key in OBJECT_META_FIELDS}


def now_rfc3339() -> str:
    # metav1.Time serializes at whole seconds.
    return gotypes.written_time(datetime.datetime.now(datetime.UTC))


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


def _regex_error(message: str, regex: str, *examples: str) -> str:
    """apimachinery's RegexError: the rule, examples, and the regular expression."""
    shown = ",  or ".join(f"'{example}'" for example in examples)
    return f"{message} (e.g. {shown}, regex used for validation is '{regex}')"


_DNS_SUBDOMAIN_ERROR: Final = _regex_error(
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
    "or '.', and must start and end with an alphanumeric character",
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", "example.com")
_DNS_LABEL_ERROR: Final = _regex_error(
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
    "and must start and end with an alphanumeric character",
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?", "my-name", "123-abc")
_DNS_1035_ERROR: Final = _regex_error(
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with "
    "an alphabetic character, and end with an alphanumeric character",
    "[a-z]([-a-z0-9]*[a-z0-9])?", "my-name", "abc-123")
_QUALIFIED_NAME_ERROR: Final = _regex_error(
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character", "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]",
    "MyName", "my.name", "123-abc")
_LABEL_VALUE_ERROR: Final = _regex_error(
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
    "'.', and must start and end with an alphanumeric character",
    "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?", "MyValue", "my_value", "12345")
# The total size of keys and values of a object's annotations (TotalAnnotationSizeLimitB).
MAX_ANNOTATIONS_BYTES: Final = 256 * 1024


def name_problems(name: str, *, dns_label: bool = False, prefix: bool = False) -> list[str]:
    """Why a name (or with `prefix`, a generateName) is not valid, in the real server's
    words; empty if valid. A generateName may end in '-' (maskTrailingDash)."""
    if prefix and len(name) > 1 and name.endswith("-"):
        name = name[:-1] + "a"
    if not dns_label:
        return subdomain_problems(name)
    problems = ["must be no more than 63 characters"] if len(name) > 63 else []
    return problems + ([] if _DNS_LABEL.fullmatch(name) else [_DNS_LABEL_ERROR])


def path_segment_problems(name: str) -> list[str]:
    """IsValidPathSegmentName (the names of RBAC's kinds, `system:discovery` say), in the
    real server's words; empty if valid."""
    if name in (".", ".."):
        return [f"may not be '{name}'"]
    return [f"may not contain '{bad}'" for bad in ("/", "%") if bad in name]


def subdomain_problems(name: str) -> list[str]:
    """IsDNS1123Subdomain, in the real server's words; empty if valid."""
    problems = ["must be no more than 253 characters"] if len(name) > 253 else []
    return problems + ([] if _DNS_SUBDOMAIN.fullmatch(name) else [_DNS_SUBDOMAIN_ERROR])


def dns1035_problems(name: str) -> list[str]:
    """IsDNS1035Label (CRD names and versions), in the real server's words; empty if valid."""
    problems = ["must be no more than 63 characters"] if len(name) > 63 else []
    return problems + ([] if _DNS_1035.fullmatch(name) else [_DNS_1035_ERROR])


def qualified_name_problems(value: str) -> list[str]:
    """IsQualifiedName: an optional DNS subdomain prefix and '/', then a name part."""
    parts = value.split("/")
    if len(parts) > 2:
        return ["a qualified name " + _QUALIFIED_NAME_ERROR + " with an optional DNS "
                "subdomain prefix and '/' (e.g. 'example.com/MyName')"]
    problems = []
    if len(parts) == 2:
        if not parts[0]:
            problems.append("prefix part must be non-empty")
        else:
            problems += ["prefix part " + problem for problem in subdomain_problems(parts[0])]
    name = parts[-1]
    if not name:
        problems.append("name part must be non-empty")
    elif len(name) > 63:
        problems.append("name part must be no more than 63 characters")
    if not _QUALIFIED_NAME.fullmatch(name):
        problems.append("name part " + _QUALIFIED_NAME_ERROR)
    return problems


def label_problems(labels: dict[str, Any]) -> list[tuple[str, str]]:
    """(value, message) for each label key or value the server would refuse."""
    problems = []
    for key, value in labels.items():
        problems += [(key, problem) for problem in qualified_name_problems(key)]
        if len(value) > 63:
            problems.append((value, "must be no more than 63 characters"))
        if not _LABEL_VALUE.fullmatch(value):
            problems.append((value, _LABEL_VALUE_ERROR))
    return problems


def annotation_problems(annotations: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, message) per invalid key (case does not matter); ("", ...) when too large."""
    problems = [(key, problem) for key in annotations
                for problem in qualified_name_problems(key.lower())]
    size = sum(len(key) + len(value) for key, value in annotations.items())
    if size > MAX_ANNOTATIONS_BYTES:
        problems.append(("", f"must have at most {MAX_ANNOTATIONS_BYTES} bytes"))
    return problems


def owner_reference_problems(reference: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(field, value, message) for an ownerReference missing what makes it one."""
    api_version = reference.get("apiVersion") or ""
    version = api_version if api_version.count("/") == 0 else (
        api_version.split("/")[1] if api_version.count("/") == 1 else "")
    wanted = {"apiVersion": ("version", version), "kind": ("kind", reference.get("kind")),
              "name": ("name", reference.get("name")), "uid": ("uid", reference.get("uid"))}
    return [(field, str(reference.get(field) or ""), f"{label} must not be empty")
            for field, (label, present) in wanted.items() if not present]
