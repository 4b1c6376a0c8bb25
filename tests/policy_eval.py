"""A small IAM policy evaluator for identity-based policies and SCPs, with Condition blocks.

Enough to check the policies the bot writes (no library on PyPI does this on Python 3.11
without network or AWS calls). Logic from AWS's "Policy evaluation logic" page
(https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic.html):
an explicit Deny in any policy wins; an SCP must allow (when SCPs are given); otherwise some
identity-policy Allow must match; else the implicit deny.

Supported: Action/Resource with ``*``/``?`` wildcards (actions case-insensitive), the
operators StringEquals, StringNotEquals, StringLike, StringNotLike, ArnLike, ArnEquals, Null,
the ``ForAllValues:``/``ForAnyValue:`` qualifiers, and ``${aws:…}`` policy variables in
condition values. Condition keys are case-insensitive, values case-sensitive, as in IAM.
Anything else raises, so a test never silently passes on an unknown operator.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

Context = Mapping[str, str | list[str]]
_VAR = re.compile(r"\$\{([^}]+)\}")


def _glob(pattern: str, case: bool = True) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(body, 0 if case else re.IGNORECASE)


def _listed(value: Any) -> list[Any]:
    return [value] if isinstance(value, str | bool) else list(value)


def _lookup(context: Context, key: str) -> list[str] | None:
    for k, v in context.items():
        if k.lower() == key.lower():
            return _listed(v)
    return None


def _substitute(value: str, context: Context) -> str | None:
    """``${aws:PrincipalTag/x}`` → its value; None when a variable has no value (no match)."""
    missing = False

    def one(m: re.Match[str]) -> str:
        nonlocal missing
        got = _lookup(context, m.group(1))
        if not got:
            missing = True
            return ""
        return got[0]

    out = _VAR.sub(one, value)
    return None if missing else out


def _match_one(op: str, wanted: str, actual: str) -> bool:
    if op in ("StringEquals", "ArnEquals"):
        return wanted == actual
    if op in ("StringLike", "ArnLike"):
        return bool(_glob(wanted).fullmatch(actual))
    raise AssertionError(f"unknown operator {op}")


def _holds(operator: str, key: str, wanted_raw: Any, context: Context) -> bool:
    qualifier, _, op = operator.rpartition(":")
    actual = _lookup(context, key)
    if op == "Null":
        return (actual is None) == (str(_listed(wanted_raw)[0]).lower() == "true")
    negated = op in ("StringNotEquals", "StringNotLike")
    base = {"StringNotEquals": "StringEquals", "StringNotLike": "StringLike"}.get(op, op)
    if base not in ("StringEquals", "StringLike", "ArnLike", "ArnEquals"):
        raise AssertionError(f"the evaluator does not know {operator}")
    wanted = [w for w in (_substitute(str(x), context) for x in _listed(wanted_raw)) if w is not None]
    if qualifier == "ForAllValues":
        return all(any(_match_one(base, w, a) for w in wanted) for a in (actual or []))
    if actual is None:
        return negated  # a missing key: StringNotEquals matches, the positive operators do not
    hit = any(_match_one(base, w, a) for w in wanted for a in actual)
    return not hit if negated else hit


def _conditions_hold(condition: Mapping[str, Any], context: Context) -> bool:
    return all(_holds(operator, key, wanted, context)
               for operator, keys in condition.items() for key, wanted in keys.items())


def matches(statement: Mapping[str, Any], action: str, resource: str, context: Context) -> bool:
    return (any(_glob(a, case=False).fullmatch(action) for a in _listed(statement["Action"]))
            and any(_glob(r).fullmatch(resource) for r in _listed(statement.get("Resource", "*")))
            and _conditions_hold(statement.get("Condition", {}), context))


def _statements(policies: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [s for p in policies for s in _listed(p["Statement"])]


def decide(identity: Sequence[Mapping[str, Any]], action: str, resource: str, context: Context,
           scps: Sequence[Mapping[str, Any]] = ()) -> str:
    """"Deny" (explicit), "ImplicitDeny" or "Allow" for one request."""
    every = _statements(identity) + _statements(scps)
    if any(s["Effect"] == "Deny" and matches(s, action, resource, context) for s in every):
        return "Deny"
    if scps and not any(s["Effect"] == "Allow" and matches(s, action, resource, context)
                        for s in _statements(scps)):
        return "ImplicitDeny"
    if any(s["Effect"] == "Allow" and matches(s, action, resource, context) for s in _statements(identity)):
        return "Allow"
    return "ImplicitDeny"
