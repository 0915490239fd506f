"""CRD schema admission: the openAPIV3Schema rules apiextensions enforces on a CRD write.

A real server refuses a CRD whose schema is not structural, whose defaults do not
validate, or whose CEL rules do not compile or cost too much, and it names the exact
place (reference 300-336). The checks, in apiextensions' order and with its words:

1. the OpenAPI schema itself (`ValidateCustomResourceDefinitionOpenAPISchema`):
   forbidden keywords, list/map types, preserve-unknown-fields, the rules' own keys;
2. structurality (`schema.ValidateStructural`): every field typed, value validations
   (anyOf/allOf/oneOf/not) only restricting, root metadata only restricting name and
   generateName;
3. defaults (`defaulting.ValidateDefaults`), only for a structural schema: each default
   pruned and valid against its own schema;
4. CEL rules, only where 1-3 found nothing: they compile against the declared types
   and their estimated cost fits the budgets (`celcheck`).

Field paths are Go's `field.Path` strings: `properties[spec].items.default`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Final

from capguard.localcluster import cel, celcheck, crdvalidation, regex, schema

Causes = list[dict[str, str]]

PER_RULE_COST_LIMIT: Final = 10_000_000           # StaticEstimatedCostLimit
SCHEMA_COST_LIMIT: Final = 100_000_000            # StaticEstimatedCRDCostLimit
_TYPES: Final = ("array", "boolean", "integer", "number", "object", "string")
_REASONS: Final = ("FieldValueDuplicate", "FieldValueForbidden", "FieldValueInvalid",
                   "FieldValueRequired")
_RESOURCE_FIELDS: Final = ("metadata", "kind", "apiVersion")
_COST_HINT: Final = ("(try simplifying the rule, or adding maxItems, maxProperties, and "
                     "maxLength where arrays, maps, and strings are declared)")
# What the structural part of a schema may say; the rest is value validation.
_JUNCTORS: Final = ("allOf", "anyOf", "oneOf")
# Keys that do not make it into a structural schema (so root metadata may carry them).
_NOT_STRUCTURAL: Final = frozenset({"example", "externalDocs", "$schema", "id"})


# field.Error constructors, one definition for all of apiextensions' admission.
_forbidden: Final = crdvalidation.forbidden
_required: Final = crdvalidation.required
_invalid: Final = crdvalidation.invalid
_not_supported: Final = crdvalidation.not_supported


def _cause(reason: str, field: str, message: str) -> dict[str, str]:
    return {"reason": reason, "field": field, "message": message}


def _key(path: str, name: str) -> str:
    return f"{path}.properties[{name}]"


def schema_causes(openapi: dict[str, Any], *, path: str) -> Causes:
    """Why apiextensions refuses this openAPIV3Schema at `path`; [] when it accepts it."""
    causes = _structural(openapi, path=path, level="root")
    if not causes:
        causes = _defaults(openapi, path=path, resource=openapi, meta=False)
    cost = _Costs()
    walk = _Walk(cel_enabled=not causes, costs=cost)
    schema_errors, cel_errors = walk.node(openapi, path=path, context=_Context(root=True))
    causes += schema_errors + cel_errors
    if cost.total > SCHEMA_COST_LIMIT:
        causes += [_forbidden(rule, "contributed to estimated rule cost total exceeding cost "
                                    "limit for entire OpenAPIv3 schema")
                   for rule in cost.most_expensive()]
        causes.append(_forbidden(path, _cost_message(
            "x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema",
            cost.total, SCHEMA_COST_LIMIT)))
    return causes


# --- 2. structurality --------------------------------------------------------------------


def _structural(node: Any, *, path: str, level: str) -> Causes:
    """schema.ValidateStructural's invariants for one node of the structural part."""
    if not isinstance(node, dict):
        return []
    causes: Causes = []
    kind = str(node["type"]) if isinstance(node.get("type"), str) else ""
    if kind == "array" and not isinstance(node.get("items"), dict):
        causes.append(_required(f"{path}.items", "must be specified"))
    for name, sub in _properties(node).items():
        causes += _structural(sub, path=_key(path, name), level="field")
    causes += _structural(node.get("items"), path=f"{path}.items", level="item")
    additional = node.get("additionalProperties")
    if additional is not None and level == "root":
        causes.append(_forbidden(f"{path}.additionalProperties", "must not be used at the root"))
    causes += _structural(additional, path=f"{path}.additionalProperties", level="field")
    causes += _extension_causes(node, path=path)
    causes += _junctor_causes(node, path=path, int_or_string=_int_or_string_pattern(node))
    causes += _type_causes(node, kind, path=path, level=level)
    causes += _resource_field_causes(node, path=path, level=level)
    return causes


def _properties(node: dict[str, Any]) -> dict[str, Any]:
    properties = node.get("properties")
    return {name: sub for name, sub in properties.items() if isinstance(sub, dict)} if (
        isinstance(properties, dict)) else {}


def _extension_causes(node: dict[str, Any], *, path: str) -> Causes:
    causes: Causes = []
    if node.get("x-kubernetes-int-or-string") is True:
        for key in ("x-kubernetes-preserve-unknown-fields", "x-kubernetes-embedded-resource"):
            if node.get(key) is True:
                causes.append(_invalid(f"{path}.{key}", True,
                                       "must be false if x-kubernetes-int-or-string is true"))
    return causes


def _type_causes(node: dict[str, Any], kind: str, *, path: str, level: str) -> Causes:
    embedded = node.get("x-kubernetes-embedded-resource") is True
    causes: Causes = []
    if embedded and kind != "object":
        detail = "must be object if x-kubernetes-embedded-resource is true"
        causes.append(_invalid(f"{path}.type", kind, detail) if kind
                      else _required(f"{path}.type", detail))
    elif not kind and node.get("x-kubernetes-int-or-string") is not True and node.get(
            "x-kubernetes-preserve-unknown-fields") is not True:
        where = {"root": "at the root", "item": "for specified array items",
                 "field": "for specified object fields"}[level]
        causes.append(_required(f"{path}.type", f"must not be empty {where}"))
    if embedded and node.get("additionalProperties") is not None:
        causes.append(_forbidden(f"{path}.additionalProperties",
                                 "must not be used if x-kubernetes-embedded-resource is set"))
    if level == "root" and kind and kind != "object":
        causes.append(_invalid(f"{path}.type", kind, "must be object at the root"))
    if embedded and node.get("x-kubernetes-preserve-unknown-fields") is not True and not (
            _properties(node)):
        causes.append(_required(f"{path}.properties", "must not be empty if "
                                "x-kubernetes-embedded-resource is true without "
                                "x-kubernetes-preserve-unknown-fields"))
    return causes


def _resource_field_causes(node: dict[str, Any], *, path: str, level: str) -> Causes:
    """apiVersion/kind are strings and metadata an object that restricts only names."""
    properties = _properties(node)
    check = level == "root" or node.get("x-kubernetes-embedded-resource") is True
    causes: Causes = []
    for name in ("kind", "apiVersion"):
        if check and name in properties and properties[name].get("type") != "string":
            causes.append(_invalid(f"{_key(path, name)}.type", properties[name].get("type", ""),
                                   "must be string"))
    metadata = properties.get("metadata")
    if metadata is None:
        return causes
    field = _key(path, "metadata")
    if check and metadata.get("type") != "object":
        causes.append(_invalid(f"{field}.type", metadata.get("type", ""), "must be object"))
    if level == "root" and not _only_restricts_names(metadata):
        causes.append(_forbidden(field, "must not specify anything other than name and "
                                        "generateName, but metadata is implicitly specified"))
    return causes


def _only_restricts_names(metadata: dict[str, Any]) -> bool:
    """Root metadata may carry a type, a default and the name/generateName properties."""
    properties = metadata.get("properties")
    if isinstance(properties, dict) and properties and not (
            set(properties) <= {"name", "generateName"}):
        return False
    rest = set(metadata) - {"type", "properties", "default"} - _NOT_STRUCTURAL
    # false is the zero value of a boolean extension: Go cannot tell it from absent
    return all(metadata[key] is False for key in rest)


def _int_or_string_pattern(node: dict[str, Any]) -> str:
    """Which junctor holds the int-or-string pattern [{type: integer}, {type: string}]."""
    pattern = [{"type": "integer"}, {"type": "string"}]
    if node.get("anyOf") == pattern:
        return "anyOf"
    all_of = node.get("allOf")
    if isinstance(all_of, list) and all_of and isinstance(all_of[0], dict) and (
            all_of[0].get("anyOf") == pattern):
        return "allOf"
    return ""


def _junctor_causes(node: dict[str, Any], *, path: str, int_or_string: str = "") -> Causes:
    """Value validations (anyOf, allOf, oneOf, not) may restrict values, never define them."""
    causes: Causes = []
    for junctor in _JUNCTORS:
        branches = node.get(junctor)
        if junctor == "anyOf" and int_or_string == "anyOf":
            continue
        for index, branch in enumerate(branches if isinstance(branches, list) else []):
            skip = "anyOf" if junctor == "allOf" and index == 0 and int_or_string == "allOf" \
                else ""
            causes += _nested_causes(branch, path=f"{path}.{junctor}[{index}]",
                                     int_or_string=skip)
    causes += _nested_causes(node.get("not"), path=f"{path}.not")
    return causes


# In a value validation these must be unset; what apiextensions says about each.
_NESTED_FORBIDDEN: Final = (
    ("type", "must be empty to be structural"),
    ("additionalProperties", "must be undefined to be structural"),
    ("default", "must be undefined to be structural"),
    ("title", "must be empty to be structural"),
    ("description", "must be empty to be structural"),
    ("nullable", "must be false to be structural"),
    ("x-kubernetes-preserve-unknown-fields", "must be false to be structural"),
    ("x-kubernetes-embedded-resource", "must be false to be structural"),
    ("x-kubernetes-int-or-string", "must be false to be structural"),
    ("x-kubernetes-list-map-keys", "must be empty to be structural"),
    ("x-kubernetes-list-type", "must be undefined to be structural"),
    ("x-kubernetes-map-type", "must be undefined to be structural"),
    ("x-kubernetes-validations", "must be empty to be structural"),
)


def _nested_causes(node: Any, *, path: str, int_or_string: str = "") -> Causes:
    if not isinstance(node, dict):
        return []
    causes = _junctor_causes(node, path=path, int_or_string=int_or_string)
    causes += _nested_causes(node.get("items"), path=f"{path}.items")
    for name, sub in _properties(node).items():
        causes += _nested_causes(sub, path=_key(path, name))
    for key, detail in _NESTED_FORBIDDEN:
        if node.get(key) not in (None, False, "", []):
            causes.append(_forbidden(f"{path}.{key}", detail))
    if "metadata" in _properties(node):
        causes.append(_forbidden(_key(path, "metadata"), "must not be specified in a nested "
                                                         "context"))
    return causes


# --- 3. defaults -------------------------------------------------------------------------


def _defaults(node: Any, *, path: str, resource: Any, meta: bool) -> Causes:
    """Every default outside resource metadata is pruned and valid against its own node."""
    if not isinstance(node, dict):
        return []
    causes: Causes = []
    if "default" in node and not meta:
        causes += _default_causes(node, path=f"{path}.default")
    causes += _defaults(node.get("items"), path=f"{path}.items", resource=resource, meta=meta)
    embedded = node is resource or node.get("x-kubernetes-embedded-resource") is True
    for name, sub in _properties(node).items():
        causes += _defaults(sub, path=_key(path, name), resource=resource,
                            meta=meta or (embedded and name in _RESOURCE_FIELDS))
    return causes


def _default_causes(node: dict[str, Any], *, path: str) -> Causes:
    value = node["default"]
    checker = schema.Schema(node)
    if isinstance(value, dict) and checker.prune(value) != value:
        return [_invalid(path, value, "must not have unknown fields")]
    return [_cause(cause.reason, _join(path, cause.field), cause.message)
            for cause in checker.validate_value(value)]


def _join(path: str, inner: str) -> str:
    if not inner:
        return path
    return f"{path}{inner}" if inner.startswith("[") else f"{path}.{inner}"


# --- 1 and 4. the OpenAPI schema and its CEL rules -----------------------------------------


@dataclasses.dataclass(frozen=True)
class _Context:
    """Where a node sits: what its ancestors allow and how often its rules may run."""

    root: bool = False
    defaults_forbidden: str = ""       # why, when a default is not allowed here
    resource_meta: bool = False
    uncorrelatable: str = ""           # the ancestor that stops oldSelf from correlating
    cardinality: int | None = 1        # None: a list or map above has no bound


@dataclasses.dataclass
class _Costs:
    """The CRD's estimated CEL cost: the total, and the rules that weigh the most."""

    total: int = 0
    rules: list[tuple[int, str]] = dataclasses.field(default_factory=list)

    def observe(self, path: str, cost: int) -> None:
        self.total = min(self.total + cost, celcheck.UNBOUNDED)
        if cost >= PER_RULE_COST_LIMIT // 100:   # below 1% of a rule's budget: not a culprit
            self.rules.append((cost, path))

    def most_expensive(self) -> list[str]:
        return [path for _, path in sorted(self.rules, key=lambda item: -item[0])[:4]]


@dataclasses.dataclass
class _Walk:
    """ValidateCustomResourceDefinitionOpenAPISchema: schema errors, then CEL errors."""

    cel_enabled: bool
    costs: _Costs

    def node(self, node: Any, *, path: str, context: _Context) -> tuple[Causes, Causes]:
        if not isinstance(node, dict):
            return [], []
        errors, cel_errors = _keyword_causes(node, path=path, context=context), []
        for sub_errors, sub_cel in self._children(node, path=path, context=context):
            errors += sub_errors
            cel_errors += sub_cel
        errors += _list_and_map_causes(node, path=path)
        rules = node.get("x-kubernetes-validations")
        if isinstance(rules, list) and rules:
            errors += _rule_key_causes(node, rules, path=f"{path}.x-kubernetes-validations")
            if not errors and self.cel_enabled:
                cel_errors += self._compile(node, rules, path=path, context=context)
        return errors, cel_errors

    def _children(self, node: dict[str, Any], *, path: str,
                  context: _Context) -> list[tuple[Causes, Causes]]:
        results = []
        additional = node.get("additionalProperties")
        if isinstance(additional, dict):
            child = dataclasses.replace(
                context, root=False, cardinality=_times(context.cardinality,
                                                        node.get("maxProperties")),
                defaults_forbidden=("inside additionalProperties applying to object metadata"
                                    if context.resource_meta else context.defaults_forbidden))
            results.append(self.node(additional, path=f"{path}.additionalProperties",
                                     context=child))
        embedded = context.root or node.get("x-kubernetes-embedded-resource") is True
        atomic_map = node.get("x-kubernetes-map-type") == "atomic"
        for name, sub in _properties(node).items():
            child = dataclasses.replace(context, root=False, uncorrelatable=(
                context.uncorrelatable or (path if atomic_map else "")))
            if embedded and name in _RESOURCE_FIELDS:
                child = dataclasses.replace(child, resource_meta=True, defaults_forbidden=(
                    f"in top-level {name}" if context.root else child.defaults_forbidden))
            results.append(self.node(sub, path=_key(path, name), context=child))
        if isinstance(node.get("items"), dict):
            child = dataclasses.replace(
                context, root=False, cardinality=_times(context.cardinality, node.get("maxItems")),
                uncorrelatable=context.uncorrelatable or (
                    path if node.get("x-kubernetes-list-type") != "map" else ""))
            results.append(self.node(node["items"], path=f"{path}.items", context=child))
        walk = _Walk(cel_enabled=False, costs=self.costs)    # no CEL in value validations
        for junctor in _JUNCTORS:
            for index, branch in enumerate(node.get(junctor) or []):
                results.append(walk.node(branch, path=f"{path}.{junctor}[{index}]",
                                         context=dataclasses.replace(context, root=False)))
        results.append(walk.node(node.get("not"), path=f"{path}.not",
                                 context=dataclasses.replace(context, root=False)))
        return results

    def _compile(self, node: dict[str, Any], rules: list[Any], *, path: str,
                 context: _Context) -> Causes:
        self_type = celcheck.declared(node, resource=context.root)
        cardinality = context.cardinality if context.cardinality is not None else (
            celcheck.unbounded_cardinality(self_type))
        causes: Causes = []
        for index, spec in enumerate(rules):
            field = f"{path}.x-kubernetes-validations[{index}]"
            causes += self._compile_rule(spec, self_type, field=field, cardinality=cardinality)
            if cel.uses_old_self(str(spec.get("rule", ""))) and context.uncorrelatable:
                causes.append(_invalid(f"{field}.rule", spec.get("rule"), (
                    "oldSelf cannot be used on the uncorrelatable portion of the schema "
                    f"within {context.uncorrelatable}")))
        return causes

    def _compile_rule(self, spec: dict[str, Any], self_type: celcheck.Declared, *, field: str,
                      cardinality: int) -> Causes:
        causes: Causes = []
        rule = celcheck.analyse(str(spec.get("rule", "")), self_type=self_type)
        causes += self._cost_causes(f"{field}.rule", "estimated rule cost",
                                    rule.cost, cardinality)
        if rule.error is not None:
            causes.append(_cause("FieldValueInvalid", f"{field}.rule", (
                f"Invalid value: {celcheck.rule_text(spec)}: compilation failed: {rule.error}")))
        elif rule.result not in ("bool", "dyn"):
            causes.append(_cause("FieldValueInvalid", f"{field}.rule", (
                f"Invalid value: {celcheck.rule_text(spec)}: cel expression must evaluate "
                "to a bool")))
        expression = spec.get("messageExpression")
        if isinstance(expression, str) and expression.strip():
            message = celcheck.analyse(expression, self_type=self_type)
            if message.error is not None:
                causes.append(_cause("FieldValueInvalid", f"{field}.messageExpression", (
                    f"Invalid value: {celcheck.rule_text(spec)}: messageExpression compilation "
                    f"failed: {message.error}")))
            else:
                causes += self._cost_causes(f"{field}.messageExpression",
                                            "estimated messageExpression cost", message.cost, 1)
        return causes

    def _cost_causes(self, field: str, what: str, cost: int, cardinality: int) -> Causes:
        total = min(cost * cardinality, celcheck.UNBOUNDED)
        self.costs.observe(field, total)
        if total > PER_RULE_COST_LIMIT:
            return [_forbidden(field, _cost_message(what, total, PER_RULE_COST_LIMIT))]
        return []


def _times(cardinality: int | None, bound: Any) -> int | None:
    if cardinality is None or not isinstance(bound, int) or isinstance(bound, bool):
        return None
    return cardinality * bound


def _cost_message(what: str, cost: int, limit: int) -> str:
    factor = cost / limit
    if factor > 100:
        shown = "more than 100x"
    elif factor < 1.5:
        shown = f"{factor:f}x"
    else:
        shown = f"{factor:.1f}x"
    return f"{what} exceeds budget by factor of {shown} {_COST_HINT}"


def _keyword_causes(node: dict[str, Any], *, path: str, context: _Context) -> Causes:
    """specStandardValidatorV3 and the checks on keywords of one node."""
    causes: Causes = []
    kind = node.get("type")
    if isinstance(kind, str) and kind and kind not in _TYPES:
        causes.append(_forbidden(f"{path}.type", "type cannot be set to null, use nullable as "
                                 "an alternative") if kind == "null"
                      else _not_supported(f"{path}.type", kind, _TYPES))
    if "default" in node and context.defaults_forbidden:
        causes.append(_forbidden(f"{path}.default",
                                 f"must not be set {context.defaults_forbidden}"))
    for key, detail in (("additionalItems", "additionalItems is not supported"),
                        ("patternProperties", "patternProperties is not supported"),
                        ("definitions", "definitions is not supported"),
                        ("dependencies", "dependencies is not supported"),
                        ("$ref", "$ref is not supported")):
        if node.get(key) not in (None, {}, ""):
            causes.append(_forbidden(f"{path}.{key}", detail))
    if isinstance(node.get("items"), list):
        causes.append(_forbidden(f"{path}.items", "items must be a schema object and not an "
                                                  "array"))
    if context.resource_meta and node.get("x-kubernetes-embedded-resource") is True:
        causes.append(_forbidden(f"{path}.x-kubernetes-embedded-resource",
                                 "must not be used inside of resource meta"))
    if context.root and node.get("nullable") is True:
        causes.append(_forbidden(f"{path}.nullable", "nullable cannot be true at the root"))
    if node.get("uniqueItems") is True:
        causes.append(_forbidden(f"{path}.uniqueItems", "uniqueItems cannot be set to true "
                                 "since the runtime complexity becomes quadratic"))
    additional = node.get("additionalProperties")
    if _properties(node) and (isinstance(additional, dict) or additional is False):
        causes.append(_forbidden(f"{path}.additionalProperties",
                                 "additionalProperties and properties are mutual exclusive"))
    if node.get("x-kubernetes-preserve-unknown-fields") is False:
        causes.append(_invalid(f"{path}.x-kubernetes-preserve-unknown-fields", False,
                               "must be true or undefined"))
    return causes + _pattern_causes(node.get("pattern"), path=path)


def _pattern_causes(pattern: Any, *, path: str) -> Causes:
    """A pattern must compile (Go's regexp.Compile), or no CR could be checked against it."""
    if not isinstance(pattern, str) or not pattern:
        return []
    try:
        regex.Pattern(pattern)
    except regex.Invalid as error:
        return [_invalid(f"{path}.pattern", pattern, "must be a valid regular expression, "
                         f"but isn't: {error}")]
    return []


def _list_and_map_causes(node: dict[str, Any], *, path: str) -> Causes:
    causes = _map_type_causes(node, path=path)
    list_type, keys = node.get("x-kubernetes-list-type"), node.get("x-kubernetes-list-map-keys")
    items = node.get("items") if isinstance(node.get("items"), dict) else None
    if list_type is not None and node.get("type") != "array":
        causes.append(_type_needed(node, "array", "x-kubernetes-list-type", path=path))
    elif list_type == "set" and items is not None:
        causes += _set_item_causes(items, path=f"{path}.items")
    if list_type is not None and list_type not in ("atomic", "set", "map"):
        causes.append(_not_supported(f"{path}.x-kubernetes-list-type", list_type,
                                     ("atomic", "set", "map")))
    if isinstance(keys, list) and keys and list_type != "map":
        detail = "must be map if x-kubernetes-list-map-keys is non-empty"
        causes.append(_required(f"{path}.x-kubernetes-list-type", detail) if list_type is None
                      else _invalid(f"{path}.x-kubernetes-list-type", list_type, detail))
    if list_type == "map":
        causes += _map_list_causes(node, keys if isinstance(keys, list) else [], items,
                                   path=path)
    return causes


def _map_type_causes(node: dict[str, Any], *, path: str) -> Causes:
    map_type = node.get("x-kubernetes-map-type")
    if map_type is None:
        return []
    causes: Causes = []
    if node.get("type") != "object":
        causes.append(_type_needed(node, "object", "x-kubernetes-map-type", path=path))
    if map_type not in ("atomic", "granular"):
        causes.append(_not_supported(f"{path}.x-kubernetes-map-type", map_type,
                                     ("atomic", "granular")))
    return causes


def _type_needed(node: dict[str, Any], kind: str, extension: str, *, path: str) -> dict[str, str]:
    detail = f"must be {kind} if {extension} is specified"
    if not node.get("type"):
        return _required(f"{path}.type", detail)
    return _invalid(f"{path}.type", node.get("type"), detail)


def _set_item_causes(items: dict[str, Any], *, path: str) -> Causes:
    """Items of a set are compared whole: lists and maps in one must be atomic."""
    detail = "must be atomic as item of a list with x-kubernetes-list-type=set"
    if items.get("type") == "array" and items.get("x-kubernetes-list-type") not in (
            None, "atomic"):
        return [_invalid(f"{path}.x-kubernetes-list-type", items.get("x-kubernetes-list-type"),
                         detail)]
    if items.get("type") == "object" and items.get("x-kubernetes-map-type") != "atomic":
        # Go prints the item's list type here (a nil pointer: "null"), not its map type.
        return [_invalid(f"{path}.x-kubernetes-map-type", items.get("x-kubernetes-list-type"),
                         detail)]
    return []


def _map_list_causes(node: dict[str, Any], keys: list[Any], items: dict[str, Any] | None, *,
                     path: str) -> Causes:
    causes: Causes = []
    if not keys:
        causes.append(_required(f"{path}.x-kubernetes-list-map-keys",
                                "must not be empty if x-kubernetes-list-type is map"))
    if node.get("items") is None:
        causes.append(_required(f"{path}.items", "must have a schema if "
                                                 "x-kubernetes-list-type is map"))
    if items is None:
        return causes
    if items.get("type") != "object":
        causes.append(_invalid(f"{path}.items.type", items.get("type", ""),
                               "must be object if parent array's x-kubernetes-list-type is map"))
        return causes
    properties, required = _properties(items), items.get("required") or []
    for key in keys:
        if key not in properties:
            causes.append(_invalid(f"{path}.x-kubernetes-list-map-keys", keys,
                                   "entries must all be names of item properties"))
            continue
        if properties[key].get("type") in ("array", "object"):
            causes.append(_invalid(f"{path}.items.properties[{key}].type", "object", (
                "must be a scalar type if parent array's x-kubernetes-list-type is map")))
        if key not in required and "default" not in properties[key]:
            causes.append(_required(f"{path}.items.properties[{key}].default", (
                "this property is in x-kubernetes-list-map-keys, so it must have a default or "
                "be a required property")))
    if len(set(map(str, keys))) < len(keys):
        causes.append(_invalid(f"{path}.x-kubernetes-list-map-keys", keys,
                               "must not contain duplicate entries"))
    return causes


def _rule_key_causes(node: dict[str, Any], rules: list[Any], *, path: str) -> Causes:
    """The keys of each rule, before anything is compiled."""
    causes: Causes = []
    for index, spec in enumerate(rules):
        field = f"{path}[{index}]"
        if not isinstance(spec, dict):
            continue
        rule, message = str(spec.get("rule") or ""), spec.get("message")
        if not rule.strip():
            causes.append(_required(f"{field}.rule", "rule is not specified"))
        elif isinstance(message, str) and message and not message.strip():
            causes.append(_invalid(f"{field}.message", message,
                                   "message must be non-empty if specified"))
        elif isinstance(message, str) and ("\n" in message.strip() or "\r" in message.strip()):
            causes.append(_invalid(f"{field}.message", message,
                                   "message must not contain line breaks"))
        elif ("\n" in rule.strip() or "\r" in rule.strip()) and not (message or "").strip():
            causes.append(_required(f"{field}.message",
                                    "message must be specified if rule contains line breaks"))
        expression = spec.get("messageExpression")
        if isinstance(expression, str) and expression and not expression.strip():
            causes.append(_required(f"{field}.messageExpression",
                                    "messageExpression must be non-empty if specified"))
        if spec.get("reason") is not None and spec.get("reason") not in _REASONS:
            causes.append(_not_supported(f"{field}.reason", spec.get("reason"), _REASONS))
        causes += _field_path_causes(node, spec.get("fieldPath"), field=f"{field}.fieldPath")
    return causes


def _field_path_causes(node: dict[str, Any], field_path: Any, *, field: str) -> Causes:
    if not isinstance(field_path, str) or not field_path:
        return []
    if not field_path.strip():
        return [_invalid(field, field_path, "fieldPath must be non-empty if specified")]
    if "\n" in field_path or "\r" in field_path:
        return [_invalid(field, field_path, "fieldPath must not contain line breaks")]
    if not schema.field_path_exists(node, field_path):
        return [_invalid(field, field_path, "fieldPath must be a valid path")]
    return []
