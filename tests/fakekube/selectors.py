"""Label selectors (the full grammar) and field selectors (`=`, `==`, `!=` on the fields each kind registers)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

Obj = dict[str, Any]

_TOKEN = re.compile(r"\s*(==|!=|=|!|\(|\)|,|>|<|[^\s!=(),<>]+)")
_KEY = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9.]{0,251}[A-Za-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


class SelectorError(ValueError):
    """A selector that does not parse, or names an unsupported field; the server answers 400."""


Requirement = tuple[str, str, tuple[str, ...]]  # key, operator, values


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            raise SelectorError(f"unable to parse requirement: unexpected input at {text[pos:]!r}")
        out.append(match.group(1))
        pos = match.end()
    return out


class LabelSelector:
    """`a=b,c!=d,e in (f,g),h notin (i),j,!k,l>3,m<7`, as `labels.Parse` reads it."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.requirements: list[Requirement] = []
        toks = _tokens(text)
        i = 0

        def take() -> str:
            nonlocal i
            if i >= len(toks):
                raise SelectorError(f"unable to parse requirement: unexpected end of {text!r}")
            i += 1
            return toks[i - 1]

        def value(tok: str) -> str:
            if tok in {"(", ")", ",", "=", "==", "!=", "!", ">", "<"} or not _VALUE.match(tok):
                raise SelectorError(f"unable to parse requirement: invalid label value {tok!r}")
            return tok

        while i < len(toks):
            tok = take()
            if tok == "!":
                key = self._key(take())
                self.requirements.append((key, "!", ()))
            else:
                key = self._key(tok)
                nxt = toks[i] if i < len(toks) else ","
                if nxt == ",":
                    self.requirements.append((key, "exists", ()))
                elif nxt in {"=", "==", "!="}:
                    take()
                    val = "" if i >= len(toks) or toks[i] == "," else value(take())
                    self.requirements.append((key, "!=" if nxt == "!=" else "=", (val,)))
                elif nxt in {">", "<"}:
                    take()
                    num = take()
                    if not num.lstrip("-").isdigit():
                        raise SelectorError(f"unable to parse requirement: {num!r} is not an integer")
                    self.requirements.append((key, nxt, (num,)))
                elif nxt in {"in", "notin"}:
                    take()
                    if take() != "(":
                        raise SelectorError("unable to parse requirement: expected '('")
                    vals: list[str] = []
                    while True:
                        tok = take()
                        if tok == ")" and not vals:
                            break
                        vals.append("" if tok in {",", ")"} else value(tok))
                        end = tok if tok in {",", ")"} else take()
                        if end == ")":
                            break
                        if end != ",":
                            raise SelectorError(f"unable to parse requirement: unexpected {end!r}")
                    self.requirements.append((key, nxt, tuple(vals)))
                else:
                    raise SelectorError(f"unable to parse requirement: unexpected {nxt!r} after {key!r}")
            if i < len(toks):
                if toks[i] != ",":
                    raise SelectorError(f"unable to parse requirement: expected ',' but found {toks[i]!r}")
                i += 1
                if i == len(toks):
                    raise SelectorError("unable to parse requirement: trailing ','")

    @staticmethod
    def _key(tok: str) -> str:
        if not _KEY.match(tok):
            raise SelectorError(f"unable to parse requirement: invalid label key {tok!r}")
        return tok

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        for key, op, vals in self.requirements:
            present = key in labels
            val = labels.get(key)
            if op == "exists":
                ok = present
            elif op == "!":
                ok = not present
            elif op == "=":
                ok = present and val == vals[0]
            elif op == "!=":
                ok = not present or val != vals[0]
            elif op == "in":
                ok = present and val in vals
            elif op == "notin":
                ok = not present or val not in vals
            else:
                try:
                    num = int(val or "")
                except ValueError:
                    return False
                ok = num > int(vals[0]) if op == ">" else num < int(vals[0])
            if not ok:
                return False
        return True


def _pod_ips(obj: Obj) -> list[str]:
    status = obj.get("status") or {}
    ips = [p.get("ip", "") for p in status.get("podIPs") or []]
    return ips or ([status["podIP"]] if status.get("podIP") else [])


def _path(*keys: str) -> Callable[[Obj], str]:
    def get(obj: Obj) -> str:
        cur: Any = obj
        for key in keys:
            cur = cur.get(key) if isinstance(cur, dict) else None
        if isinstance(cur, bool):
            return "true" if cur else "false"
        return "" if cur is None else str(cur)

    return get


def _flag(*keys: str) -> Callable[[Obj], str]:
    inner = _path(*keys)
    return lambda obj: inner(obj) or "false"


_META = {"metadata.name": _path("metadata", "name"), "metadata.namespace": _path("metadata", "namespace")}
FIELDS: dict[str, dict[str, Callable[[Obj], Any]]] = {
    "Pod": {
        **_META,
        "spec.nodeName": _path("spec", "nodeName"),
        "spec.host": _path("spec", "nodeName"),
        "spec.restartPolicy": _path("spec", "restartPolicy"),
        "spec.schedulerName": _path("spec", "schedulerName"),
        "spec.serviceAccountName": _path("spec", "serviceAccountName"),
        "spec.hostNetwork": _flag("spec", "hostNetwork"),
        "status.phase": _path("status", "phase"),
        "status.podIP": lambda o: (_pod_ips(o) or [""])[0],
        "status.podIPs": _pod_ips,  # matches when any pod IP matches
        "status.nominatedNodeName": _path("status", "nominatedNodeName"),
    },
    "Service": {**_META, "spec.clusterIP": _path("spec", "clusterIP"), "spec.type": _path("spec", "type")},
    "Node": {"metadata.name": _path("metadata", "name"), "spec.unschedulable": _flag("spec", "unschedulable")},
    "Namespace": {"metadata.name": _path("metadata", "name"), "status.phase": _path("status", "phase")},
    "EndpointSlice": dict(_META),
}


class FieldSelector:
    """`status.phase!=Succeeded,status.phase!=Failed`; only the fields in FIELDS[kind]."""

    def __init__(self, text: str, kind: str) -> None:
        self.text = text
        self.terms: list[tuple[Callable[[Obj], Any], bool, str]] = []
        for term in filter(None, (t.strip() for t in text.split(","))):
            for op in ("!=", "==", "="):
                if op in term:
                    field, _, val = term.partition(op)
                    break
            else:
                raise SelectorError(f"invalid selector: '{text}'; can't understand '{term}'")
            getter = FIELDS[kind].get(field.strip())
            if getter is None:
                raise SelectorError(f"field label not supported: {field.strip()}")
            self.terms.append((getter, op == "!=", val.strip()))

    def matches(self, obj: Obj) -> bool:
        for getter, negate, want in self.terms:
            got = getter(obj)
            hit = want in got if isinstance(got, list) else got == want
            if hit == negate:
                return False
        return True
