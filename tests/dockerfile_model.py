"""The Dockerfile and .dockerignore as data, for tests/test_container.py and tests/test_deploy.py.

The Dockerfile is parsed with the `dockerfile` package (BuildKit's own parser); .dockerignore is
matched the way BuildKit does it: the last matching pattern wins, `!` re-includes, and a pattern
that matches a directory matches everything below it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import dockerfile

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


@dataclass
class Stage:
    base: str
    name: str | None
    commands: list[dockerfile.Command] = field(default_factory=list)

    def all(self, instruction: str) -> list[dockerfile.Command]:
        return [c for c in self.commands if c.cmd == instruction.upper()]

    def one(self, instruction: str) -> dockerfile.Command:
        found = self.all(instruction)
        assert len(found) == 1, f"stage {self.name or self.base}: expected one {instruction}, found {len(found)}"
        return found[0]

    def env(self) -> dict[str, str]:
        """ENV of this stage, unexpanded (`ENV A=1 B=2` and `ENV A 1` forms)."""
        values: dict[str, str] = {}
        for command in self.all("ENV"):
            pairs = command.value
            for key, value in zip(pairs[::2], pairs[1::2], strict=True):
                values[key] = value
        return values

    def user(self) -> tuple[str, str | None]:
        """USER of the stage as (user, group); the last USER instruction counts."""
        users = self.all("USER")
        assert users, f"stage {self.name or self.base} has no USER"
        user, _, group = users[-1].value[0].partition(":")
        return user, group or None


def stages(path: Path = DOCKERFILE) -> list[Stage]:
    result: list[Stage] = []
    for command in dockerfile.parse_file(str(path)):
        if command.cmd == "FROM":
            words = command.value
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            result.append(Stage(base=words[0], name=name))
        elif command.cmd == "ARG" and not result:
            continue  # global ARG before the first FROM
        else:
            assert result, f"{command.original!r} before FROM"
            result[-1].commands.append(command)
    return result


def exposed(stage: Stage) -> set[tuple[int, str]]:
    """EXPOSE of a stage as {(port, "TCP"|"UDP")}."""
    ports = set()
    for command in stage.all("EXPOSE"):
        for item in command.value:
            port, _, proto = item.partition("/")
            ports.add((int(port), (proto or "tcp").upper()))
    return ports


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out.append(pattern[i : end + 1])
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def ignore_rules(path: Path = DOCKERIGNORE) -> list[tuple[bool, str, re.Pattern[str]]]:
    """(excludes?, pattern, regex) per line of .dockerignore, in order."""
    rules = []
    if path.exists():
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            pattern = str(PurePosixPath(line.lstrip("!").strip().lstrip("/")))
            rules.append((not negated, pattern, _pattern_regex(pattern)))
    return rules


def ignored(relative: str, rules: list[tuple[bool, str, re.Pattern[str]]]) -> bool:
    """Whether .dockerignore keeps the context path `relative` (POSIX) out of the build."""
    path = PurePosixPath(relative)
    candidates = [str(path), *(str(parent) for parent in path.parents if str(parent) != ".")]
    excluded = False
    for excludes, _pattern, regex in rules:
        if any(regex.match(candidate) for candidate in candidates):
            excluded = excludes
    return excluded


def build_context(root: Path = ROOT) -> list[str]:
    """The files `docker build root` sends: every file under root that .dockerignore lets through."""
    rules = ignore_rules(root / ".dockerignore")
    reincluded = [pattern for excludes, pattern, _regex in rules if not excludes]

    def may_reinclude_below(directory: str) -> bool:
        return any(p.startswith(directory + "/") or p[:1] in "*?[" for p in reincluded)

    files = []
    for top, dirs, names in os.walk(root):
        base = Path(top).relative_to(root).as_posix()
        prefix = "" if base == "." else base + "/"
        dirs[:] = sorted(d for d in dirs if not (ignored(prefix + d, rules) and not may_reinclude_below(prefix + d)))
        files += [prefix + n for n in sorted(names) if not ignored(prefix + n, rules)]
    return sorted(files)
