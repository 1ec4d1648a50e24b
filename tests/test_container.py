"""The container image, without a Docker engine: the Dockerfile replayed on this machine.

The replay follows the Dockerfile instruction by instruction (parsed with BuildKit's parser), so
the test breaks when the Dockerfile does:

- the build context is the work tree filtered by .dockerignore;
- each stage's COPY, ENV, WORKDIR and RUN are carried out in a scratch directory standing for the
  image's filesystem: the image's absolute paths (/src, /opt/dnsd...) are mapped into it, and the
  base image's `python` is this machine's Debian Python 3.11 (the base image has Python 3.11 too);
- the final stage keeps only what it copies from the build stage; the whole tree is then made
  read-only (as readOnlyRootFilesystem is in the pod);
- the ENTRYPOINT runs with the final stage's ENV and nothing else, as the stage's numeric USER,
  with a read-only working directory and HOME, and answers DNS over UDP and TCP on loopback.

Two deviations, both on the build side: pip may use this machine's package cache (the image
build uses none, PIP_NO_CACHE_DIR), and PIP_* settings of this machine (index, CA) are kept.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dockerfile
import pytest
from conftest import EXAMPLE, DnsdProcess, Zone, rrsets_text
from dockerfile_model import ROOT, Stage, build_context, stages

import dnsd

# The base image's PATH; the replay maps /usr/local/bin (where its `python` lives) into the tree.
BASE_PATH = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
BASE_DIRS = ("/usr/local/bin",)
RUN_TIMEOUT = 240  # seconds for one RUN (pip install from the machine's cache takes ~20 s)


def base_python(base_image: str) -> str:
    """A Python >= 3.11 that any user may run (pyenv's lives under root's private home), the
    base image's version (python:3.11-slim... -> 3.11) when this machine has it."""
    version = re.match(r"python:(\d+\.\d+)", base_image)
    preferred = [f"{d}/python{version.group(1)}" for d in ("/usr/bin", "/usr/local/bin")] if version else []
    for candidate in (*preferred, sys._base_executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        path = Path(candidate).resolve()
        if not path.is_file():
            continue
        world_reachable = all(p.stat().st_mode & stat.S_IXOTH for p in [path, *path.parents])
        usable = subprocess.run(
            [str(path), "-c", "import sys, venv, ensurepip; print(sys.version_info >= (3, 11))"],
            capture_output=True,
            text=True,
        )
        if world_reachable and usable.stdout.strip() == "True":
            return str(path)
    pytest.fail(
        "no Python >= 3.11 with venv and ensurepip that a non-root user can run "
        "(on Debian: apt-get install python3-venv)"
    )


class Image:
    """The image's filesystem under `root`: container path /a/b is root/a/b."""

    def __init__(self, root: Path, image_paths: set[str]) -> None:
        self.root = root
        # Longest first, so /opt/dnsd/bin maps before /opt/dnsd.
        self.image_paths = sorted(image_paths, key=len, reverse=True)

    def path(self, container_path: str) -> Path:
        assert container_path.startswith("/"), container_path
        return self.root / container_path.lstrip("/")

    def map_text(self, text: str) -> str:
        """The image's absolute paths in a command or an ENV value, rewritten into the tree."""
        for image_path in self.image_paths:
            text = re.sub(rf"(?<![\w./-]){re.escape(image_path)}(?=[/\s\"':]|$)", str(self.path(image_path)), text)
        return text


def expand(value: str, env: dict[str, str]) -> str:
    """$VAR and ${VAR} in an ENV value, as the Dockerfile frontend expands them."""
    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", lambda m: env.get(m.group(1) or m.group(2), ""), value)


def image_paths(all_stages: list[Stage]) -> set[str]:
    """Absolute paths the Dockerfile creates or names: WORKDIR, COPY destinations and sources."""
    paths = set(BASE_DIRS)
    for stage in all_stages:
        for command in stage.all("WORKDIR"):
            paths.add(command.value[0].rstrip("/"))
        for command in stage.all("COPY"):
            for word in command.value:
                if word.startswith("/"):
                    paths.add(word.rstrip("/") or "/")
    return paths


def copy_from_context(context: list[str], sources: list[str], dest: Path, dest_is_dir: bool) -> None:
    for source in sources:
        source = source.rstrip("/") or "."
        if source in context:  # a file
            target = dest / Path(source).name if dest_is_dir else dest
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / source, target)
            continue
        below = [f for f in context if source == "." or f.startswith(source + "/")]
        assert below, f"COPY {source}: not in the build context (missing, or excluded by .dockerignore)"
        for relative in below:
            target = dest / (relative if source == "." else relative[len(source) + 1 :])
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / relative, target)


def replay_build_stage(stage: Stage, image: Image, context: list[str], python: str) -> None:
    shim = image.path("/usr/local/bin")
    shim.mkdir(parents=True, exist_ok=True)
    for name in ("python", "python3", "python3.11"):
        (shim / name).symlink_to(python)
    # The machine's pip settings (index, CA, timeouts), none of its Python settings.
    env = {k: v for k, v in os.environ.items() if k.startswith("PIP_") or k in ("HOME", "LANG", "TMPDIR")}
    env["PATH"] = image.map_text(BASE_PATH)
    workdir = "/"
    for command in stage.commands:
        if command.cmd == "ENV":
            for key, value in stage_env_pairs(command):
                env[key] = image.map_text(expand(value, env))
        elif command.cmd == "WORKDIR":
            workdir = command.value[0]
            image.path(workdir).mkdir(parents=True, exist_ok=True)
        elif command.cmd == "COPY":
            assert not command.flags, f"the replay does not know COPY {command.flags} in the build stage"
            *sources, dest = command.value
            dest_path = image.path(dest if dest.startswith("/") else f"{workdir.rstrip('/')}/{dest}")
            copy_from_context(context, sources, dest_path, dest.endswith("/") or len(sources) > 1)
        elif command.cmd == "RUN":
            assert not command.json, "RUN in exec form: teach the replay"
            run_env = {k: v for k, v in env.items() if k != "PIP_NO_CACHE_DIR"}  # use the machine's cache
            started = time.monotonic()
            done = subprocess.run(
                ["/bin/sh", "-c", image.map_text(command.value[0])],
                cwd=image.path(workdir),
                env=run_env,
                capture_output=True,
                text=True,
                timeout=RUN_TIMEOUT,
            )
            assert done.returncode == 0, (
                f"RUN failed ({done.returncode}) after {time.monotonic() - started:.0f}s: {command.original}\n"
                f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        elif command.cmd in ("LABEL", "ARG", "EXPOSE"):
            continue
        else:
            pytest.fail(f"the replay does not know {command.cmd} in the build stage: {command.original}")


def stage_env_pairs(command: dockerfile.Command) -> list[tuple[str, str]]:
    return list(zip(command.value[::2], command.value[1::2], strict=True))


def replay_final_stage(stage: Stage, build: Stage, image: Image) -> tuple[list[str], dict[str, str], str]:
    """Keeps only what the final stage copies from the build stage; returns entrypoint, env, user."""
    kept = set(BASE_DIRS)
    env = {"PATH": BASE_PATH, "LANG": "C.UTF-8"}  # as the python base image sets them
    for command in stage.commands:
        if command.cmd == "COPY":
            assert command.flags == (f"--from={build.name}",), f"unexpected COPY in the final stage: {command.original}"
            source, dest = command.value
            if source.rstrip("/") != dest.rstrip("/"):
                shutil.copytree(image.path(source), image.path(dest), symlinks=True)
            kept.add(dest.rstrip("/"))
        elif command.cmd == "ENV":
            for key, value in stage_env_pairs(command):
                env[key] = expand(value, env)
        elif command.cmd == "RUN":
            pytest.fail(f"the final stage has a RUN; the replay cannot run it: {command.original}")
    prune(image, kept)
    entrypoint = stage.one("ENTRYPOINT")
    assert entrypoint.json, "ENTRYPOINT must be in exec form"
    cmd = [c.value for c in stage.all("CMD")]
    command_line = [image.map_text(word) for word in entrypoint.value] + list(cmd[-1] if cmd else ())
    user, group = stage.user()
    assert user.isdigit() and (group is None or group.isdigit()), f"USER {user}:{group} is not numeric"
    return command_line, {k: image.map_text(v) for k, v in env.items()}, f"{user}:{group or user}"


def prune(image: Image, kept: set[str]) -> None:
    """Removes everything in the tree that is neither kept nor above something kept."""
    kept_paths = [image.path(k) for k in kept]

    def walk(directory: Path) -> None:
        for child in directory.iterdir():
            if any(child == k for k in kept_paths):
                continue
            if any(child in k.parents for k in kept_paths):
                walk(child)
            elif child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    walk(image.root)


def make_read_only(root: Path) -> None:
    subprocess.run(["chmod", "-R", "a-w", str(root)], check=True)


@pytest.fixture(scope="module")
def replayed() -> Iterator[tuple[Image, list[str], dict[str, str], str]]:
    all_stages = stages()
    assert len(all_stages) >= 2, "expected a build stage and a final stage"
    build, final = all_stages[0], all_stages[-1]
    # Not under pytest's tmp_path: that lies in a directory only root may enter.
    root = Path(tempfile.mkdtemp(prefix="dnsd-image-"))
    root.chmod(0o755)
    image = Image(root, image_paths(all_stages))
    try:
        replay_build_stage(build, image, build_context(), base_python(build.base))
        command_line, env, user = replay_final_stage(final, build, image)
        make_read_only(root)
        yield image, command_line, env, user
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(root)], check=False)
        shutil.rmtree(root, ignore_errors=True)


def test_install_is_compiled_and_pip_free(replayed: tuple[Image, list[str], dict[str, str], str]) -> None:
    """Bytecode for every module of dnsd was compiled at build time; the runtime has no pip."""
    image, command_line, _env, _user = replayed
    venv = Path(command_line[0]).parent.parent
    packages = list(venv.glob("lib/python3*/site-packages"))
    assert len(packages) == 1, packages
    site = packages[0]
    tag = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sys; print(sys.implementation.cache_tag)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    modules = sorted((site / "dnsd").rglob("*.py"))
    assert {m.name for m in modules} >= {"__init__.py", "cli.py", "app.py", "wire.py"}
    missing = [str(m) for m in modules if not (m.parent / "__pycache__" / f"{m.stem}.{tag}.pyc").exists()]
    assert not missing, f"no .pyc for {missing}"
    assert (site / "dnsd" / "examples" / "cluster.yaml").exists(), "the --demo example is not installed"
    assert (site / "uvloop").is_dir(), "the [uvloop] extra is not installed"
    assert not (venv / "bin" / "pip").exists(), "pip is still in the runtime venv"
    assert not image.path("/src").exists(), "the build stage's sources leaked into the final stage"


def test_image_tree_is_read_only(replayed: tuple[Image, list[str], dict[str, str], str]) -> None:
    """Nothing in the image is writable, as with readOnlyRootFilesystem: dnsd must not need to."""
    image = replayed[0]
    writable = []
    for top, dirs, files in os.walk(image.root):
        for name in [*dirs, *files]:
            path = Path(top) / name
            if not path.is_symlink() and path.lstat().st_mode & 0o222:
                writable.append(str(path))
    assert not writable, writable[:10]


def test_runs_as_numeric_user_from_read_only_install(replayed: tuple[Image, list[str], dict[str, str], str]) -> None:
    image, command_line, image_env, user = replayed
    uid, gid = user.split(":")
    assert int(uid) != 0
    # Only the image's ENV, as a container would have it; HOME and the working directory are the
    # (read-only) image root, as for a UID without a passwd entry.
    env = {**image_env, "HOME": str(image.root), "DNSD_LAMEDUCK": "1"}
    args = [*command_line, "--demo", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"]
    if os.geteuid() == 0:
        args = [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={gid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--no-new-privs",
            *args,
        ]
    # else the tests already run as a non-root user: the point (not root, nothing writable) holds.
    process = DnsdProcess(command=args, env=env, inherit_env=False, cwd=image.root)
    try:
        listening = process.wait_for_match(r"listening on \[?[0-9.:]+\]?:(\d+) .*UDP batching: (\w+)", timeout=30)
        port = int(listening.group(1))
        assert listening.group(2) == "c", "the image answers UDP in Python: its C extension is missing"
        process.wait_for("synced", timeout=30)
        status = Path(f"/proc/{process.proc.pid}/status").read_text()
        if os.geteuid() == 0:
            assert re.search(rf"^Uid:\s+{uid}\s+{uid}\s+{uid}\s+{uid}$", status, re.M), status
            assert re.search(rf"^Gid:\s+{gid}\s+{gid}\s+{gid}\s+{gid}$", status, re.M), status
            assert re.search(r"^CapEff:\s+0+$", status, re.M), status
        expected = Zone(EXAMPLE.read_text()).ask("web.default.svc.gua.example.com.", "AAAA")
        assert expected.answer, "the example serves no AAAA for web.default"
        query = dns.message.make_query("web.default.svc.gua.example.com.", "AAAA")
        for reply in (
            dns.query.udp(query, "127.0.0.1", port=port, timeout=5),
            dns.query.tcp(query, "127.0.0.1", port=port, timeout=5),
        ):
            assert reply.rcode() == dns.rcode.NOERROR
            assert reply.flags & dns.flags.AA
            assert rrsets_text(reply.answer) == rrsets_text(expected.answer)
        assert not any("Traceback" in line or "ERROR" in line for line in process.lines), process.lines
        process.proc.send_signal(signal.SIGTERM)
        assert process.proc.wait(15) == 0, process.lines
    finally:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait()


def test_installed_version_is_the_package_version(replayed: tuple[Image, list[str], dict[str, str], str]) -> None:
    image, command_line, image_env, _user = replayed
    done = subprocess.run(
        [*command_line, "--version"], env={**image_env, "HOME": str(image.root)}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"dnsd {dnsd.__version__}"
