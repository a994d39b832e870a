"""Rules over the call: CEL conditions that decide what an agent's dispatch gets.

A governed action carries an ordered list of rules (`ActionRule`); the first whose condition holds
decides: allow, deny (with a reason for the agent), approve (with the quorum, approver roles and
escalation policy to use) or "use the tier" (the tier/risk rule, also the answer when no rule
holds). A condition is a CEL expression (https://cel.dev) over these variables:

    params          the dispatch parameters (JSON object)
    evidence        the dispatch evidence, with `confidence` when the agent gave one
    agent           {"name": service account name, "owner": its owner's username}
    workflow        {"slug", "environment", "tier": the tier in force now}
    now             the time of the call (timestamp)
    business_hours  whether the workflow is in business hours now (bool)
    tags            the workflow's context tags in force: {"migration_window": true,
                    "expected_latency_increase": 15.0, ...}

CEL is evaluated by `common-expression-language` (Rust's `cel` crate): it compares int and double
as numbers (`params.amount <= 50` holds for 4 and for 49.5, where cel-python refuses the mixed
comparison), compiles in about 10 µs and evaluates a rule in under 2 µs against a context built
once per call. Nothing here writes: `approvals.dispatch` decides and records.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import cel

VARIABLES = ("params", "evidence", "agent", "workflow", "now", "business_hours", "tags")
MAX_CONDITION = 2000
_POSITION = re.compile(r"<input>:(\d+):(\d+):\s*(.*)")
# Names a macro binds (`tags.exists(t, t == 'x')` binds t): not variables of the call.
_BOUND = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_]\w*)\s*,")
_PATH = re.compile(r"\b(params|evidence|agent|workflow|tags|now|business_hours)\b"
                   r"((?:\s*\.\s*[A-Za-z_]\w*|\s*\[\s*(?:'[^'\\]*'|\"[^\"\\]*\")\s*\])*)(\s*\()?")
_STEP = re.compile(r"\.\s*([A-Za-z_]\w*)|\[\s*(?:'([^'\\]*)'|\"([^\"\\]*)\")\s*\]")


class RuleSyntaxError(ValueError):
    """A condition that does not compile, with the 1-based line and column of the error."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        self.message, self.line, self.column = message, line, column
        where = f"line {line}, column {column}: " if line is not None else ""
        super().__init__(f"{where}{message}")


class RuleRuntimeError(Exception):
    """A condition that failed on this call (a missing field, a wrong type): the call is denied."""


@lru_cache(maxsize=4096)
def compile_condition(text: str) -> cel.Program:
    """The compiled program of a condition (cached by its text); RuleSyntaxError if it is not one."""
    text = text.strip()
    if not text:
        raise RuleSyntaxError("Write a condition, e.g. params.amount <= 50 (or true for every call).")
    if len(text) > MAX_CONDITION:
        raise RuleSyntaxError(f"Keep a condition under {MAX_CONDITION:,} characters.")
    try:
        program = cel.compile(text)
    except ValueError as exc:
        found = _POSITION.search(str(exc))
        if found is None:
            raise RuleSyntaxError(str(exc).splitlines()[0]) from None
        line, column, message = found.groups()
        raise RuleSyntaxError(message.strip(), int(line), int(column)) from None
    unknown = sorted(set(program.variables()) - set(VARIABLES) - set(_BOUND.findall(text)))
    if unknown:
        column = re.search(rf"\b{re.escape(unknown[0])}\b", text)
        raise RuleSyntaxError(
            f"Unknown variable {unknown[0]!r}; a condition reads {', '.join(VARIABLES)}.",
            1 + text.count("\n", 0, column.start()) if column else None,
            column.start() - text.rfind("\n", 0, column.start()) if column else None,
        )
    return program


def check(text: str) -> str | None:
    """The error of a condition as a person reads it, or None when it compiles."""
    try:
        compile_condition(text)
    except RuleSyntaxError as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class Call:
    """What a rule sees of one dispatch."""

    params: dict
    evidence: dict
    agent: dict
    workflow: dict
    now: datetime
    business_hours: bool
    tags: dict

    def variables(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in VARIABLES}


class Evaluator:
    """Evaluates conditions against one call; the CEL context is built once for all of its rules."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self._variables = call.variables()
        self._context = cel.Context(self._variables)

    def holds(self, text: str) -> bool:
        """Whether the condition holds for the call; RuleRuntimeError when it cannot be decided."""
        try:
            program = compile_condition(text)
        except RuleSyntaxError as exc:  # saved before a library change made it invalid: never a pass
            raise RuleRuntimeError(f"does not compile: {exc}") from None
        try:
            result = program.execute(self._context)
        except KeyError as exc:
            raise RuleRuntimeError(f"no such field: {exc.args[0] if exc.args else exc}") from None
        except Exception as exc:  # noqa: BLE001 - every failure of a condition is the caller's deny
            raise RuleRuntimeError(str(exc).split(". ")[0] or type(exc).__name__) from None
        if not isinstance(result, bool):
            raise RuleRuntimeError(f"gave {result!r}, not true or false")
        return result

    def values_read(self, text: str) -> dict[str, Any]:
        """The call's values a condition reads, by path: {"params.amount": 400, "tags.x": "<absent>"}."""
        read: dict[str, Any] = {}
        for match in _PATH.finditer(text):
            name, tail, call = match.groups()
            steps = [a or b or c for a, b, c in _STEP.findall(tail or "")]
            if call and steps:  # `params.country.matches(...)`: a method, not a field
                steps = steps[:-1]
            value: Any = self._variables[name]
            for step in steps:
                value = value.get(step, ABSENT) if isinstance(value, dict) else ABSENT
                if value is ABSENT:
                    break
            path = ".".join([name, *steps])
            if value is ABSENT:
                read[path] = "<absent>"
            elif isinstance(value, datetime):
                read[path] = value.isoformat()
            elif isinstance(value, (dict, list)) and steps == [] and name in ("params", "evidence", "tags"):
                continue  # the whole object is in the answer already; name only what was picked out
            else:
                read[path] = value
        return read


ABSENT = object()
