"""Kubernetes objects from a file (`kubectl get ... -o yaml|json` output), reloaded on change.

The whole file is one snapshot of the cluster: each load becomes a `Resync` per kind, so an
object removed from the file disappears from the zone. A file that fails to parse is reported
and skipped; the last good data keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import yaml

from dnsd.names import AddressPolicy
from dnsd.records import KINDS, Event, Kind, Record, RecordError, Resync, Synced, record_from

log = logging.getLogger("dnsd.source.file")

try:
    _YamlLoader: type = yaml.CSafeLoader
except AttributeError:  # PyYAML built without libyaml
    _YamlLoader = yaml.SafeLoader


class FileError(ValueError):
    """The file cannot be read as Kubernetes objects."""


def _documents(text: str, origin: str) -> list[Any]:
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            return [json.loads(text)]
        except json.JSONDecodeError as exc:
            raise FileError(f"{origin}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    try:
        return [d for d in yaml.load_all(text, Loader=_YamlLoader) if d is not None]
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise FileError(f"{origin}: invalid YAML{where}: {problem}") from None


def _objects(document: Any, origin: str) -> Iterable[Mapping[str, Any]]:
    if isinstance(document, list):
        for item in document:
            yield from _objects(item, origin)
        return
    if not isinstance(document, Mapping):
        raise FileError(f"{origin}: expected Kubernetes objects, found {type(document).__name__}")
    kind = document.get("kind")
    if isinstance(kind, str) and kind.endswith("List") and "items" in document:
        items = document.get("items") or []
        if not isinstance(items, list):
            raise FileError(f"{origin}: {kind}.items is not a list")
        for item in items:
            if not isinstance(item, Mapping):
                raise FileError(f"{origin}: an item of {kind} is not an object")
            # `kubectl get -o yaml` leaves kind out of items only for typed lists
            if "kind" not in item and kind != "List":
                item = {**item, "kind": kind[: -len("List")]}
            yield item
        return
    yield document


def parse_objects(text: str, policy: AddressPolicy, *, origin: str = "<input>") -> dict[Kind, list[Record]]:
    """The records in a text of YAML or JSON Kubernetes objects, by kind."""
    records: dict[Kind, list[Record]] = {kind: [] for kind in KINDS}
    for document in _documents(text, origin):
        for number, obj in enumerate(_objects(document, origin), 1):
            try:
                record = record_from(obj, policy)
            except RecordError as exc:
                raise FileError(f"{origin}: object {number} ({obj.get('kind')}): {exc}") from None
            except Exception as exc:  # any other shape of garbage: still this file's fault
                raise FileError(f"{origin}: object {number} ({obj.get('kind')}) cannot be read: {exc!r}") from None
            if record is not None:
                records[record.kind_name].append(record)
    return records


def read_records(path: str, policy: AddressPolicy) -> dict[Kind, list[Record]]:
    origin = "<stdin>" if path == "-" else path
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise FileError(f"{origin}: cannot read: {exc}") from None
    return parse_objects(text, policy, origin=origin)


def _signature(path: str) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


class FileSource:
    """Loads the file once, then polls it and reloads it when it changes (not for stdin)."""

    def __init__(self, path: str, policy: AddressPolicy, *, interval: float = 1.0) -> None:
        self.path = path
        self.policy = policy
        self.interval = interval
        self.loads = 0
        self.failures = 0

    async def events(self, initial: dict[Kind, list[Record]] | None = None) -> AsyncIterator[Event]:
        """Events of the first load (initial, when already read), then of every good reload."""
        signature = None if self.path == "-" else _signature(self.path)
        records = initial if initial is not None else await asyncio.to_thread(read_records, self.path, self.policy)
        self.loads += 1
        for event in _resync(records):
            yield event
        yield Synced()
        if self.path == "-":
            return
        while True:
            await asyncio.sleep(self.interval)
            current = _signature(self.path)
            if current == signature:
                continue
            signature = current
            if current is None:
                self.failures += 1
                log.error("%s: file is gone; keeping the last good data", self.path)
                continue
            try:
                records = await asyncio.to_thread(read_records, self.path, self.policy)
            except FileError as exc:
                self.failures += 1
                log.error("%s; keeping the last good data", exc)
                continue
            except Exception:  # a bug must not end reloading: the next good file still counts
                self.failures += 1
                log.exception("%s: reload failed; keeping the last good data", self.path)
                continue
            self.loads += 1
            log.info("%s: reloaded (%s)", self.path, _summary(records))
            for event in _resync(records):
                yield event


def _resync(records: dict[Kind, list[Record]]) -> list[Event]:
    return [Resync(kind, tuple(records.get(kind, ()))) for kind in KINDS]


def _summary(records: dict[Kind, list[Record]]) -> str:
    return ", ".join(f"{len(records.get(k, ()))} {k}s" for k in KINDS)
