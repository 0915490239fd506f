"""What cel-go's checker and cost estimator say about a rule before a CRD is accepted.

apiextensions compiles every `x-kubernetes-validations` rule against the type its schema
node declares, and estimates the rule's worst-case cost, before it accepts a CRD (reference
330, 331, 336). celpy, the evaluator in `cel.py`, has neither, so this module walks celpy's
parse tree once with the declared types: it reports the compile errors a real server
reports (syntax, undefined fields, undeclared references) and the estimated maximum cost,
following cel-go's `checker/cost.go` and apiserver's CEL types: sizes are bounded by
maxItems/maxLength/maxProperties or, where a schema gives no bound, by what fits in one
3 MiB request.

Where it cannot tell a type it treats the value as `dyn` and reports nothing: a rule a
real server accepts must never be refused here.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any, Final

import celpy
import lark

MAX_REQUEST_BYTES: Final = 3 * 1024 * 1024
UNBOUNDED: Final = 2**64 - 1
_STRING_TRAVERSAL: Final = 0.1        # common.StringTraversalCostFactor
_REGEX_LENGTH: Final = 0.25           # common.RegexStringLengthCostFactor
_LIST_CREATE: Final = 10
_MAP_CREATE: Final = 30
_MACROS: Final = frozenset({"all", "exists", "exists_one", "map", "filter"})
_TYPE_NAMES: Final = frozenset({"int", "uint", "double", "bool", "string", "bytes", "list",
                                "map", "null_type", "type", "dyn"})
_SCALARS: Final = frozenset({"int", "uint", "double", "bool", "duration", "timestamp",
                             "null", "type"})
# Kubernetes' string library: cost proportional to the receiver, result as long as it.
_STRING_FUNCTIONS: Final = frozenset({"lowerAscii", "upperAscii", "trim", "substring",
                                      "replace", "charAt", "indexOf", "lastIndexOf", "split",
                                      "find", "findAll", "join"})
_ENV: Final = celpy.Environment()


@dataclasses.dataclass(frozen=True)
class Declared:
    """A CEL type as apiserver derives it from a schema node (`SchemaDeclType`)."""

    kind: str
    fields: Mapping[str, Declared] = dataclasses.field(default_factory=dict)
    element: Declared | None = None
    max_elements: int = 1        # length of a string, items of a list, entries of a map
    min_size: int = 1            # smallest JSON serialization, for unbounded estimates


DYN: Final = Declared("dyn", max_elements=UNBOUNDED)
_UNKNOWN_STRING: Final = Declared("string", max_elements=UNBOUNDED, min_size=2)
# A map's keys: apiserver types them with its shared StringType, whose MaxElements is never
# set, so cel-go sizes a key (`k` in `self.all(k, ...)`) as 0 characters however long it
# is: `k.matches(re)` costs ceil(0.1 * (0 + 1)) * ceil(0.25 * len(re)). Unbounded here would
# refuse CRDs a real server accepts.
_MAP_KEY: Final = Declared("string", max_elements=0, min_size=2)


def declared(raw: Any, *, resource: bool = False) -> Declared:
    """The type CEL rules see for a schema node; `resource` for the root or an embedded one."""
    if not isinstance(raw, dict):
        return DYN
    if raw.get("x-kubernetes-int-or-string") is True:
        return Declared("dyn", max_elements=MAX_REQUEST_BYTES - 2, min_size=1)
    kind = raw.get("type")
    if kind == "object":
        return _object(raw, resource=resource or raw.get("x-kubernetes-embedded-resource") is True)
    if kind == "array":
        items = declared(raw.get("items"))
        bound = _bound(raw.get("maxItems"), (MAX_REQUEST_BYTES - 2) // (items.min_size + 1))
        return Declared("list", element=items, max_elements=bound, min_size=2)
    if kind == "string":
        return _string(raw)
    scalar = {"integer": ("int", 1), "number": ("double", 1), "boolean": ("bool", 4)}
    if kind in scalar:
        name, size = scalar[kind]
        return Declared(name, min_size=size)
    return DYN


def _object(raw: dict[str, Any], *, resource: bool) -> Declared:
    additional = raw.get("additionalProperties")
    if isinstance(additional, dict):
        value = declared(additional)
        bound = _bound(raw.get("maxProperties"), (MAX_REQUEST_BYTES - 2) // (value.min_size + 6))
        return Declared("map", element=value, max_elements=bound, min_size=2)
    properties = raw.get("properties") if isinstance(raw.get("properties"), dict) else {}
    assert isinstance(properties, dict)
    if raw.get("x-kubernetes-preserve-unknown-fields") is True and not properties and (
            not resource):
        return DYN  # fields nobody declared: nothing to check them against
    fields = {name: declared(sub) for name, sub in properties.items()}
    if resource:
        # Rules see apiVersion, kind and, of metadata, only name and generateName.
        known = _mapping(_mapping(properties.get("metadata")).get("properties"))
        fields["metadata"] = Declared("object", fields={
            key: declared(known.get(key) or {"type": "string"})
            for key in ("name", "generateName")}, min_size=2)
        fields.setdefault("apiVersion", _string({}))
        fields.setdefault("kind", _string({}))
    return Declared("object", fields=fields, max_elements=len(fields), min_size=2)


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _token(node: Any) -> lark.Token:
    """A terminal of the parse tree (where the grammar puts an IDENT or a literal)."""
    assert isinstance(node, lark.Token)
    return node


def _string(raw: dict[str, Any]) -> Declared:
    form = raw.get("format")
    if form == "byte":
        return Declared("bytes", max_elements=_bound(raw.get("maxLength"),
                                                     MAX_REQUEST_BYTES - 2), min_size=2)
    if form == "duration":
        return Declared("duration", min_size=2)
    if form in ("date", "date-time"):
        return Declared("timestamp", min_size=2)
    return Declared("string", max_elements=_bound(raw.get("maxLength"), MAX_REQUEST_BYTES - 2),
                    min_size=2)


def _bound(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 \
        else default


def unbounded_cardinality(self_type: Declared) -> int:
    """How many times a rule may run when a list or map above it has no bound."""
    return MAX_REQUEST_BYTES // (self_type.min_size + 1)


@dataclasses.dataclass(frozen=True)
class Analysis:
    """A compiled rule's verdict: the compile error (cel-go's words) or its maximum cost."""

    error: str | None
    cost: int
    result: str = "dyn"


class CompileError(Exception):
    """One issue, located as cel-go locates it (1-based line and column)."""

    def __init__(self, message: str, *, line: int, column: int) -> None:
        super().__init__(message)
        self.message, self.line, self.column = message, line, column


def analyse(source: str, *, self_type: Declared) -> Analysis:
    """Parse and check `source` with `self` (and `oldSelf`) of `self_type`."""
    try:
        tree = _ENV.compile(source)
    except Exception as error:  # celpy wraps lark's errors; their text is not cel-go's
        issue = _syntax_issue(source, error)
        return Analysis(_issue_text(source, issue), 0)
    checker = _Checker(source, {"self": self_type, "oldSelf": self_type})
    try:
        value = checker.visit(tree)
    except CompileError as issue:
        return Analysis(_issue_text(source, issue), 0)
    except RecursionError:
        return Analysis(None, UNBOUNDED)  # nested past what we can walk: assume the worst
    return Analysis(None, value.cost, value.type.kind)


def _syntax_issue(source: str, error: Exception) -> CompileError:
    cause = error.__context__
    line = getattr(cause, "line", None) or getattr(error, "line", None) or 1
    token = getattr(cause, "token", None)
    expected = set(getattr(cause, "expected", None) or ())
    if isinstance(token, lark.Token) and token.type == "$END":
        found, column = "<EOF>", len(source.splitlines()[-1] if source.splitlines() else "") + 1
    else:
        found = str(token) if token is not None else ""
        column = getattr(cause, "column", None) or getattr(error, "column", None) or 1
    return CompileError(f"Syntax error: mismatched input '{found}' expecting "
                        f"{_antlr_expected(expected)}", line=int(line), column=int(column))


# What ANTLR (cel-go's parser) lists when any expression may start here.
_EXPRESSION_START: Final = ("{'[', '{', '(', '.', '-', '!', 'true', 'false', 'null', NUM_FLOAT,"
                            " NUM_INT, NUM_UINT, STRING, BYTES, IDENTIFIER}")
_TOKEN_NAMES: Final = {"RPAR": "')'", "RSQB": "']'", "RBRACE": "'}'", "COLON": "':'",
                       "COMMA": "','", "IDENT": "IDENTIFIER", "DOT": "'.'", "LPAR": "'('"}


def _antlr_expected(expected: set[str]) -> str:
    if {"IDENT", "LPAR", "MINUS", "BANG"} <= expected:
        return _EXPRESSION_START
    names = sorted(_TOKEN_NAMES.get(name, name) for name in expected)
    return names[0] if len(names) == 1 else "{" + ", ".join(names) + "}"


def _issue_text(source: str, issue: CompileError) -> str:
    """cel-go's `Issues.String()`: the error, the line, and a caret under the column."""
    lines = source.splitlines() or [""]
    text = lines[min(issue.line, len(lines)) - 1]
    return (f"ERROR: <input>:{issue.line}:{issue.column}: {issue.message}\n | {text}\n"
            f" | {'.' * (issue.column - 1)}^")


@dataclasses.dataclass(frozen=True)
class _Value:
    type: Declared
    size: int     # the largest size() it can have: length, items or entries; 1 for scalars
    cost: int


def _add(*costs: int) -> int:
    return min(sum(costs), UNBOUNDED)


def _times(left: int, right: int) -> int:
    return min(left * right, UNBOUNDED)


def _factor(size: int, factor: float) -> int:
    return min(math.ceil(size * factor), UNBOUNDED)


def _typed(kind: Declared) -> _Value:
    """A value of a declared type, sized as the schema bounds it."""
    return _Value(kind, 1 if kind.kind in _SCALARS else kind.max_elements, 0)


class _Checker:
    """Types and costs of one parsed rule, node by node (grammar: celpy's cel.lark)."""

    def __init__(self, source: str, variables: dict[str, Declared]) -> None:
        self.source = source
        self.variables = variables

    def visit(self, tree: lark.Tree[Any]) -> _Value:
        handler = getattr(self, f"_{tree.data}", None)
        if handler is None:
            return self._children(tree)
        result: _Value = handler(tree)
        return result

    def _children(self, tree: lark.Tree[Any]) -> _Value:
        """Rules with one child pass it through; other shapes are walked for their cost."""
        values = [self.visit(child) for child in tree.children if isinstance(child, lark.Tree)]
        if len(values) == 1:
            return values[0]
        return _Value(DYN, UNBOUNDED, _add(1, *(value.cost for value in values)))

    def _expr(self, tree: lark.Tree[Any]) -> _Value:
        if len(tree.children) == 1:
            return self.visit(tree.children[0])
        condition, yes, no = (self.visit(child) for child in tree.children)
        kind = yes.type if yes.type.kind == no.type.kind else DYN
        return _Value(kind, max(yes.size, no.size), _add(condition.cost, max(yes.cost, no.cost)))

    def _logical(self, tree: lark.Tree[Any]) -> _Value:
        if len(tree.children) == 1:
            return self.visit(tree.children[0])
        left, right = (self.visit(child) for child in tree.children)
        return _Value(Declared("bool"), 1, _add(left.cost, right.cost))

    _conditionalor = _logical
    _conditionaland = _logical

    def _operands(self, tree: lark.Tree[Any]) -> tuple[str, _Value, _Value]:
        """A binary rule's operator (`relation_lt`, `addition_add`...) and its operands."""
        operator, right_tree = tree.children
        return operator.data, self.visit(operator.children[0]), self.visit(right_tree)

    def _relation(self, tree: lark.Tree[Any]) -> _Value:
        if len(tree.children) == 1:
            return self.visit(tree.children[0])
        operator, left, right = self._operands(tree)
        if operator == "relation_in":
            cost = _add(right.size, left.cost, right.cost)
        else:  # comparing strings, bytes or lists walks the shorter one
            cost = _add(max(1, _factor(min(left.size, right.size), _STRING_TRAVERSAL)),
                        left.cost, right.cost)
        return _Value(Declared("bool"), 1, cost)

    def _addition(self, tree: lark.Tree[Any]) -> _Value:
        if len(tree.children) == 1:
            return self.visit(tree.children[0])
        operator, left, right = self._operands(tree)
        kinds = {left.type.kind, right.type.kind}
        if operator == "addition_add" and kinds & {"string", "bytes", "list", "dyn"} and (
                not kinds & {"int", "uint", "double", "duration", "timestamp"}):
            size = _add(left.size, right.size)
            if "list" in kinds:
                return _Value(left.type if left.type.kind == "list" else right.type, size,
                              _add(1, left.cost, right.cost))
            concatenated = Declared("string", max_elements=size, min_size=2)
            return _Value(concatenated, size,
                          _add(_factor(size, _STRING_TRAVERSAL), left.cost, right.cost))
        kind = left.type if left.type.kind == right.type.kind else DYN
        return _Value(kind, 1, _add(1, left.cost, right.cost))

    def _multiplication(self, tree: lark.Tree[Any]) -> _Value:
        if len(tree.children) == 1:
            return self.visit(tree.children[0])
        _, left, right = self._operands(tree)
        kind = left.type if left.type.kind == right.type.kind else DYN
        return _Value(kind, 1, _add(1, left.cost, right.cost))

    def _unary(self, tree: lark.Tree[Any]) -> _Value:
        if len(tree.children) == 1:
            return self.visit(tree.children[0])
        operator, operand_tree = tree.children
        operand = self.visit(operand_tree)
        kind = Declared("bool") if operator.data == "unary_not" else operand.type
        return _Value(kind, 1, _add(1, operand.cost))

    def _member_dot(self, tree: lark.Tree[Any]) -> _Value:
        operand_tree, name = tree.children[0], _token(tree.children[1])
        operand = self.visit(operand_tree)
        field = self._field(operand.type, name, at=self._dot_before(name))
        selecting = 1 if operand.type.kind in ("object", "map", "dyn") else 0
        return dataclasses.replace(_typed(field), cost=_add(operand.cost, selecting))

    def _field(self, kind: Declared, name: lark.Token, *, at: int) -> Declared:
        if kind.kind == "object":
            if str(name) not in kind.fields:
                raise CompileError(f"undefined field '{name}'", line=name.line or 1,
                                   column=at)
            return kind.fields[str(name)]
        if kind.kind == "map" and kind.element is not None:
            return kind.element
        return DYN

    def _dot_before(self, name: lark.Token) -> int:
        """cel-go places a selection at its dot (1-based column)."""
        start = name.start_pos or 0
        return self.source.rfind(".", 0, start) + 1

    def _member_index(self, tree: lark.Tree[Any]) -> _Value:
        operand, index = (self.visit(child) for child in tree.children)
        element = operand.type.element if operand.type.kind in ("list", "map") else None
        return dataclasses.replace(_typed(element or DYN), cost=_add(1, operand.cost, index.cost))

    def _member_object(self, tree: lark.Tree[Any]) -> _Value:
        return _Value(DYN, UNBOUNDED, _add(40, self._children(tree).cost))

    def _member_dot_arg(self, tree: lark.Tree[Any]) -> _Value:
        target_tree, name, *rest = tree.children
        arguments = rest[0].children if rest and rest[0] is not None else []
        if str(name) in _MACROS and len(arguments) in (2, 3):
            return self._comprehension(str(name), self.visit(target_tree), arguments)
        target = self.visit(target_tree)
        values = [self.visit(argument) for argument in arguments]
        return _method(str(name), target, values)

    def _comprehension(self, macro: str, target: _Value, arguments: list[Any]) -> _Value:
        variable = _ident_name(arguments[0])
        if variable is None:
            return _Value(DYN, UNBOUNDED, UNBOUNDED)
        element = target.type.element if target.type.kind == "list" else (
            _MAP_KEY if target.type.kind == "map" else DYN)
        outer = self.variables.get(variable)
        self.variables[variable] = element or DYN
        try:
            bodies = [self.visit(argument) for argument in arguments[1:]]
        finally:
            if outer is None:
                del self.variables[variable]
            else:
                self.variables[variable] = outer
        body = _add(*(value.cost for value in bodies))
        # accumulator set-up, loop condition and step around the body, as the macros expand
        step, init, result = {"all": (3, 0, 1), "exists": (4, 0, 1), "exists_one": (2, 0, 2),
                              "map": (12, 10, 1), "filter": (13, 10, 1)}[macro]
        cost = _add(target.cost, init, result, _times(target.size, _add(step, body)))
        if macro in ("map", "filter"):
            mapped = bodies[-1].type if macro == "map" else (element or DYN)
            return _Value(Declared("list", element=mapped, max_elements=target.size),
                          UNBOUNDED, cost)
        return _Value(Declared("bool"), 1, cost)

    def _ident_arg(self, tree: lark.Tree[Any]) -> _Value:
        name, *rest = tree.children
        arguments = rest[0].children if rest and rest[0] is not None else []
        if str(name) == "has" and len(arguments) == 1:
            return self._has(_token(name), arguments[0])
        values = [self.visit(argument) for argument in arguments]
        if str(name) in _MACROS or not values:
            return _Value(DYN, UNBOUNDED, _add(1, *(value.cost for value in values)))
        return _method(str(name), values[0], values[1:])

    def _has(self, name: lark.Token, argument: lark.Tree[Any]) -> _Value:
        """has(x.f): f must be a field x can have; a test-only selection costs nothing."""
        selection = _find_select(argument)
        if selection is not None:
            operand_tree, field = selection.children[0], _token(selection.children[1])
            operand = self.visit(operand_tree)
            paren = self.source.index("(", name.end_pos or 0)
            self._field(operand.type, field, at=paren + 1)
        return _Value(Declared("bool"), 1, 0)

    def _ident(self, tree: lark.Tree[Any]) -> _Value:
        name = _token(tree.children[0])
        if str(name) in self.variables:
            return dataclasses.replace(_typed(self.variables[str(name)]), cost=1)
        if str(name) in _TYPE_NAMES:
            return _Value(Declared("type"), 1, 1)
        raise CompileError(f"undeclared reference to '{name}' (in container '')",
                           line=name.line or 1, column=name.column or 1)

    def _list_lit(self, tree: lark.Tree[Any]) -> _Value:
        items = [self.visit(child) for child in (tree.children[0].children
                                                 if tree.children and tree.children[0] else [])]
        element = items[0].type if items and all(
            item.type.kind == items[0].type.kind for item in items) else DYN
        return _Value(Declared("list", element=element, max_elements=len(items)), len(items),
                      _add(_LIST_CREATE, *(item.cost for item in items)))

    def _map_lit(self, tree: lark.Tree[Any]) -> _Value:
        entries = [self.visit(child) for child in (tree.children[0].children
                                                   if tree.children and tree.children[0] else [])]
        return _Value(Declared("map", element=DYN, max_elements=len(entries) // 2),
                      len(entries) // 2, _add(_MAP_CREATE, *(entry.cost for entry in entries)))

    def _literal(self, tree: lark.Tree[Any]) -> _Value:
        token = _token(tree.children[0])
        if token.type in ("STRING_LIT", "MLSTRING_LIT", "BYTES_LIT"):
            length = max(len(str(token)) - 2, 0)
            return _Value(Declared("string" if token.type != "BYTES_LIT" else "bytes",
                                   max_elements=length), length, 0)
        kind = {"INT_LIT": "int", "UINT_LIT": "uint", "FLOAT_LIT": "double", "BOOL_LIT": "bool",
                "NULL_LIT": "null"}.get(token.type, "dyn")
        return _Value(Declared(kind), 1, 0)


def _method(name: str, target: _Value, arguments: list[_Value]) -> _Value:
    """A function or method call: cel-go's cost for the known ones, else one unit."""
    costs = _add(target.cost, *(argument.cost for argument in arguments))
    first = arguments[0] if arguments else None
    if name == "matches" and first is not None:
        work = _times(_factor(_add(target.size, 1), _STRING_TRAVERSAL),
                      _factor(first.size, _REGEX_LENGTH))
        return _Value(Declared("bool"), 1, _add(work, costs))
    if name == "contains" and first is not None:
        work = _times(_factor(target.size, _STRING_TRAVERSAL),
                      _factor(first.size, _STRING_TRAVERSAL))
        return _Value(Declared("bool"), 1, _add(work, costs))
    if name in ("startsWith", "endsWith") and first is not None:
        return _Value(Declared("bool"), 1, _add(_factor(first.size, _STRING_TRAVERSAL), costs))
    if name in _STRING_FUNCTIONS:
        result = Declared("string", max_elements=target.size, min_size=2)
        return _Value(result, target.size, _add(1, _factor(target.size, _STRING_TRAVERSAL), costs))
    if name == "size":
        return _Value(Declared("int"), 1, _add(1, costs))
    conversions = {"int": "int", "uint": "uint", "double": "double", "bool": "bool",
                   "duration": "duration", "timestamp": "timestamp", "type": "type"}
    if name in conversions:
        return _Value(Declared(conversions[name]), 1, _add(1, costs))
    if name == "string":  # cel-go gives a conversion's result no size: unbounded
        return _Value(_UNKNOWN_STRING, UNBOUNDED, _add(1, costs))
    return _Value(DYN, UNBOUNDED, _add(1, costs))


def _ident_name(tree: Any) -> str | None:
    """The variable name of a comprehension's first argument (`x` in `all(x, ...)`)."""
    while isinstance(tree, lark.Tree) and len(tree.children) == 1:
        if tree.data == "ident":
            return str(tree.children[0])
        tree = tree.children[0]
    return None


def _find_select(tree: Any) -> lark.Tree[Any] | None:
    while isinstance(tree, lark.Tree):
        if tree.data == "member_dot":
            return tree
        if len(tree.children) != 1:
            return None
        tree = tree.children[0]
    return None


def rule_text(spec: dict[str, Any]) -> str:
    """A rule as Go's %#v prints apiextensions.ValidationRule (1.30: six fields)."""
    def quoted(key: str) -> str:
        value = spec.get(key)
        return json.dumps(value if isinstance(value, str) else "", ensure_ascii=False)
    reason = "(*apiextensions.FieldValueErrorReason)(nil)" if spec.get("reason") is None else (
        "(*apiextensions.FieldValueErrorReason)(0xc000000000)")
    old_self = "(*bool)(nil)" if spec.get("optionalOldSelf") is None else "(*bool)(0xc000000000)"
    return (f"apiextensions.ValidationRule{{Rule:{quoted('rule')}, Message:{quoted('message')}, "
            f"MessageExpression:{quoted('messageExpression')}, Reason:{reason}, "
            f"FieldPath:{quoted('fieldPath')}, OptionalOldSelf:{old_self}}}")
