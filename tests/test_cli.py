"""End to end: the real `dnsd` command and `python -m dnsd` as child processes, on loopback only.

Every server test starts dnsd with `--listen 127.0.0.1:0` (or `[::1]:0`) and queries it over the
network; one-shot commands (`--check`, `--help`, bad flags) run with a timeout. Tests of a flag's
effect run twice: once with the flag on the command line, once with the `DNSD_<NAME>` variable.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest
import yaml
from conftest import ROOT, DnsdProcess, free_port

import dnsd

ZONE = "gua.example.com"
REVERSE6 = "8.b.d.0.1.0.0.2.ip6.arpa"
REVERSE4 = "113.0.203.in-addr.arpa"
ALL_ZONES = (ZONE, REVERSE6, REVERSE4)
RUN_TIMEOUT = 20.0
RELOAD_TIMEOUT = 10.0
"""The file is polled once a second; a change must be served well within this."""
CREATED = "2026-11-01T10:00:00Z"

# The base cluster: `web` has two dual-stack pods in two /64s, `api` is annotated (exposed, TTL
# 1000), and `app` lives in namespace `other`.
WEB_PODS = {"web-a": ["2001:db8:0:1::a", "203.0.113.10"], "web-b": ["2001:db8:0:2::b", "203.0.113.11"]}
API_PODS = {"api-0": ["2001:db8:0:3::1"]}
APP_PODS = {"app-0": ["2001:db8:0:4::1"]}
API_ANNOTATIONS = {"dnsd.io/expose": "true", "dnsd.io/ttl": "1000"}


# -- building cluster files ------------------------------------------------------------------------


def service(name: str, namespace: str = "default", annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "creationTimestamp": CREATED}
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {"type": "ClusterIP", "clusterIP": "None", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    }


def endpoint_slice(svc: str, namespace: str, family: str, pods: Mapping[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{svc}-{family.lower()}",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": svc},
        },
        "addressType": family,
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        "endpoints": [
            {
                "addresses": [address],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "targetRef": {"kind": "Pod", "name": pod, "namespace": namespace},
            }
            for pod, address in pods.items()
        ],
    }


def pod(name: str, namespace: str, addresses: Sequence[str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": CREATED},
        "spec": {"nodeName": "node-1"},
        "status": {"phase": "Running", "podIPs": [{"ip": a} for a in addresses]},
    }


def app(
    name: str,
    pods: Mapping[str, Sequence[str]],
    namespace: str = "default",
    annotations: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """A Service, one EndpointSlice per address family, and its ready pods."""
    objects = [service(name, namespace, annotations)]
    for family, version in (("IPv6", 6), ("IPv4", 4)):
        chosen = {
            p: next(a for a in addresses if ipaddress.ip_address(a).version == version)
            for p, addresses in pods.items()
            if any(ipaddress.ip_address(a).version == version for a in addresses)
        }
        if chosen:
            objects.append(endpoint_slice(name, namespace, family, chosen))
    objects.extend(pod(p, namespace, addresses) for p, addresses in pods.items())
    return objects


def base_objects() -> list[dict[str, Any]]:
    return [
        *app("web", WEB_PODS),
        *app("api", API_PODS, annotations=API_ANNOTATIONS),
        *app("app", APP_PODS, namespace="other"),
    ]


def as_list(objects: Sequence[Mapping[str, Any]]) -> str:
    """`kubectl get ... -o yaml`: one `kind: List`."""
    return yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": list(objects)}, sort_keys=False)


def as_json(objects: Sequence[Mapping[str, Any]]) -> str:
    """`kubectl get ... -o json`."""
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}, indent=2)


def as_documents(objects: Sequence[Mapping[str, Any]]) -> str:
    """Multi-document YAML, one object per `---` document."""
    return yaml.safe_dump_all(list(objects), sort_keys=False)


def as_typed_lists(objects: Sequence[Mapping[str, Any]]) -> str:
    """ServiceList, EndpointSliceList and PodList documents whose items carry no `kind`."""
    documents = []
    for kind in ("Service", "EndpointSlice", "Pod"):
        items = [{k: v for k, v in obj.items() if k != "kind"} for obj in objects if obj["kind"] == kind]
        documents.append({"apiVersion": "v1", "kind": f"{kind}List", "items": items})
    return yaml.safe_dump_all(documents, sort_keys=False)


def write_file(path: Path, text: str) -> None:
    """Replace path atomically, as `kubectl ... > tmp && mv tmp path` would."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


BROKEN_YAML = "apiVersion: v1\nkind: List\nitems:\n- kind: Service\n  metadata: {name: web, namespace: default\n"


@pytest.fixture
def cluster_file(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.yaml"
    write_file(path, as_list(base_objects()))
    return path


@pytest.fixture(autouse=True)
def _no_dnsd_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A DNSD_* variable in the caller's environment must not leak into the children."""
    for key in list(os.environ):
        if key.startswith("DNSD_"):
            monkeypatch.delenv(key)


# -- starting dnsd ---------------------------------------------------------------------------------


def console_script() -> str:
    """The installed `dnsd` console script of the interpreter running the tests."""
    beside = Path(sys.executable).parent / "dnsd"
    if beside.exists():
        return str(beside)
    found = shutil.which("dnsd")
    assert found is not None, "the dnsd console script is not installed (pip install -e .)"
    return found


COMMANDS = {"console-script": lambda: [console_script()], "python-m": lambda: [sys.executable, "-m", "dnsd"]}


class CommandProcess(DnsdProcess):
    """Like the conftest fixture's process, but any command line and any working directory."""

    def __init__(self, command: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None) -> None:
        super().__init__(command=command, cwd=cwd, env=env)


@pytest.fixture
def command_process() -> Iterator[Callable[..., CommandProcess]]:
    started: list[CommandProcess] = []

    def start(command: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None) -> CommandProcess:
        process = CommandProcess(command, cwd=cwd, env=env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def env_name(flag: str) -> str:
    return "DNSD_" + flag.upper().replace("-", "_")


def options(
    path: Path | str, settings: Sequence[tuple[str, str]] = (), *, zones: Sequence[str] = ALL_ZONES
) -> list[tuple[str, str]]:
    return [
        *(("zone", z) for z in zones),
        ("from-file", str(path)),
        ("listen", "127.0.0.1:0"),
        *settings,
    ]


def as_args(settings: Sequence[tuple[str, str]]) -> list[str]:
    return [arg for name, value in settings for arg in (f"--{name}", value)]


def as_env(settings: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Settings as DNSD_<NAME> variables; a repeated setting becomes a comma-separated list."""
    env: dict[str, str] = {}
    for name, value in settings:
        key = env_name(name)
        env[key] = f"{env[key]},{value}" if key in env else value
    return env


def launch(
    dnsd_process: type[DnsdProcess],
    via: str,
    path: Path | str,
    settings: Sequence[tuple[str, str]] = (),
    *,
    zones: Sequence[str] = ALL_ZONES,
    stdin: bytes | None = None,
) -> DnsdProcess:
    """Start `python -m dnsd` configured through flags or through the environment, and wait for it."""
    everything = options(path, settings, zones=zones)
    if via == "flags":
        return dnsd_process(as_args(everything), stdin=stdin).ready()
    assert via == "env"
    return dnsd_process([], env=as_env(everything), stdin=stdin).ready()


VIA = pytest.mark.parametrize("via", ["flags", "env"])


def run_dnsd(
    *args: str,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    cwd: Path = ROOT,
    command: Sequence[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """A one-shot dnsd run; a run that does not end within RUN_TIMEOUT fails the test."""
    argv = [*(command or [sys.executable, "-m", "dnsd"]), *args]
    try:
        return subprocess.run(
            argv,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            env={**os.environ, "DNSD_HTTP": "127.0.0.1:0", "DNSD_LAMEDUCK": "0", **(env or {})},
            cwd=cwd,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{argv} did not exit within {RUN_TIMEOUT}s; stderr: {exc.stderr!r}") from None


# -- asking it -------------------------------------------------------------------------------------


def query(port: int, name: str, rdtype: str = "AAAA", host: str = "127.0.0.1") -> dns.message.Message:
    message = dns.message.make_query(name, rdtype)
    for attempt in range(3):
        try:
            return dns.query.udp(message, host, port=port, timeout=2.0)
        except dns.exception.Timeout:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def rcode(response: dns.message.Message) -> str:
    return dns.rcode.to_text(response.rcode())


def records(response: dns.message.Message, rdtype: str | None = None, section: str = "answer") -> set[str]:
    """The rdata of a section as text, optionally of one type only."""
    wanted = None if rdtype is None else dns.rdatatype.from_text(rdtype)
    return {
        rdata.to_text()
        for rrset in getattr(response, section)
        if wanted is None or rrset.rdtype == wanted
        for rdata in rrset
    }


def ttls(response: dns.message.Message) -> set[int]:
    return {rrset.ttl for rrset in response.answer}


def ask(port: int, name: str, rdtype: str = "AAAA", host: str = "127.0.0.1") -> tuple[str, set[str]]:
    response = query(port, name, rdtype, host)
    return rcode(response), records(response, rdtype)


def serial(port: int, zone: str = ZONE) -> int:
    response = query(port, zone, "SOA")
    assert rcode(response) == "NOERROR", response
    return next(iter(response.answer[0])).serial


def svc(name: str, namespace: str = "default", zone: str = ZONE) -> str:
    return f"{name}.{namespace}.svc.{zone}."


def pod_fqdn(name: str, namespace: str = "default", zone: str = ZONE) -> str:
    return f"{name}.{namespace}.pod.{zone}."


def ptr(address: str) -> str:
    return dns.reversename.from_address(address).to_text()


def wait_until(check: Callable[[], bool], describe: Callable[[], str], timeout: float = RELOAD_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    if not check():
        raise AssertionError(f"not within {timeout}s: {describe()}")


def dig(port: int, name: str, rdtype: str, *extra: str) -> tuple[str, set[str]]:
    """dig's status and the rdata of its answer section."""
    binary = shutil.which("dig")
    assert binary is not None, "dig is not installed"
    result = subprocess.run(
        [binary, "@127.0.0.1", "-p", str(port), "+norec", "+time=2", "+tries=2", *extra, name, rdtype],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert result.returncode == 0, result
    status = re.search(r"status: (\w+)", result.stdout)
    assert status is not None, result.stdout
    answer_section = result.stdout.partition(";; ANSWER SECTION:\n")[2].partition("\n\n")[0]
    answers = {line.split(None, 4)[4] for line in answer_section.splitlines() if line and not line.startswith(";")}
    assert re.search(r"flags: qr aa", result.stdout), result.stdout
    return status.group(1), answers


def assert_one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines}"
    assert lines[0].startswith("dnsd: error:"), lines[0]
    return lines[0]


def no_traceback(process: DnsdProcess) -> None:
    text = "\n".join(process.lines)
    assert "Traceback" not in text, text


# -- 1. both commands serve ------------------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_command_serves_over_udp_and_tcp(
    command: str, command_process: Callable[..., CommandProcess], cluster_file: Path, tmp_path: Path
) -> None:
    process = command_process([*COMMANDS[command](), *as_args(options(cluster_file))], cwd=tmp_path).ready()
    response = query(process.port, svc("web"))
    assert rcode(response) == "NOERROR"
    assert response.flags & dns.flags.AA
    assert records(response, "AAAA") == {"2001:db8:0:1::a", "2001:db8:0:2::b"}
    assert dig(process.port, svc("web"), "A") == ("NOERROR", {"203.0.113.10", "203.0.113.11"})
    assert dig(process.port, svc("web"), "AAAA", "+tcp") == ("NOERROR", {"2001:db8:0:1::a", "2001:db8:0:2::b"})
    assert dig(process.port, svc("gone"), "AAAA")[0] == "NXDOMAIN"
    assert process.stop() == 0
    no_traceback(process)


def test_listens_on_ipv4_and_ipv6_loopback(dnsd_process: type[DnsdProcess], cluster_file: Path) -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    process = launch(dnsd_process, "env", cluster_file, [("listen", "[::1]:0")])
    assert {host for host, _port in process.addresses} == {"127.0.0.1", "::1"}
    for host, port in process.addresses:
        assert ask(port, svc("api"), host=host) == ("NOERROR", {"2001:db8:0:3::1"})


# -- 2. the file is reloaded -----------------------------------------------------------------------


def test_file_changes_are_served_and_a_broken_file_keeps_the_last_good_data(
    dnsd_process: type[DnsdProcess], cluster_file: Path
) -> None:
    process = dnsd_process(["--zone", ZONE, "--from-file", str(cluster_file), "--listen", "127.0.0.1:0"]).ready()
    port = process.port
    assert ask(port, svc("web")) == ("NOERROR", {"2001:db8:0:1::a", "2001:db8:0:2::b"})
    assert ask(port, svc("api"))[0] == "NOERROR"
    time.sleep(1.2)  # let the serial take its first step after the initial load
    first_serial = serial(port)

    # web-b moves to a new address, cache is added, api is removed
    moved = {"web-a": WEB_PODS["web-a"], "web-b": ["2001:db8:0:2::c", "203.0.113.11"]}
    write_file(
        cluster_file,
        as_list([*app("web", moved), *app("cache", {"cache-0": ["2001:db8:0:5::1"]}), *app("app", APP_PODS, "other")]),
    )

    def edited() -> bool:
        return (
            ask(port, svc("web")) == ("NOERROR", {"2001:db8:0:1::a", "2001:db8:0:2::c"})
            and ask(port, svc("cache")) == ("NOERROR", {"2001:db8:0:5::1"})
            and ask(port, svc("api"))[0] == "NXDOMAIN"
            and serial(port) > first_serial
        )

    wait_until(
        edited,
        lambda: (
            f"web {ask(port, svc('web'))}, cache {ask(port, svc('cache'))}, api {ask(port, svc('api'))}, "
            f"serial {serial(port)} (was {first_serial}); log {process.lines}"
        ),
    )
    assert ask(port, pod_fqdn("api-0"))[0] == "NXDOMAIN"
    assert any(str(cluster_file) in line and "reloaded" in line for line in process.lines), process.lines

    # a broken file is reported, naming the file, and the last good data keeps serving
    write_file(cluster_file, BROKEN_YAML)
    error = process.wait_for("invalid YAML", timeout=RELOAD_TIMEOUT)
    assert str(cluster_file) in error, error
    assert "ERROR" in error, error
    assert ask(port, svc("web")) == ("NOERROR", {"2001:db8:0:1::a", "2001:db8:0:2::c"})
    assert ask(port, svc("cache")) == ("NOERROR", {"2001:db8:0:5::1"})
    assert ask(port, svc("api"))[0] == "NXDOMAIN"
    broken_serial = serial(port)

    # fixed again: reloaded
    fixed = {"web-a": ["2001:db8:0:1::d", "203.0.113.10"], "web-b": moved["web-b"]}
    write_file(cluster_file, as_list([*app("web", fixed), *app("api", API_PODS, annotations=API_ANNOTATIONS)]))
    wait_until(
        lambda: (
            ask(port, svc("web")) == ("NOERROR", {"2001:db8:0:1::d", "2001:db8:0:2::c"})
            and ask(port, svc("api")) == ("NOERROR", {"2001:db8:0:3::1"})
            and ask(port, svc("cache"))[0] == "NXDOMAIN"
            and serial(port) > broken_serial
        ),
        lambda: f"web {ask(port, svc('web'))}, api {ask(port, svc('api'))}, serial {serial(port)}; {process.lines}",
    )
    assert process.stop() == 0
    no_traceback(process)


def test_reload_survives_a_file_with_a_field_of_the_wrong_type(
    dnsd_process: type[DnsdProcess], cluster_file: Path
) -> None:
    """Valid YAML whose EndpointSlice has `ports: 5`: reported like any broken file, and the
    source keeps watching, so the fixed file is served."""
    process = dnsd_process(["--zone", ZONE, "--from-file", str(cluster_file), "--listen", "127.0.0.1:0"]).ready()
    port = process.port
    objects = base_objects()
    objects[1] = {**objects[1], "ports": 5}
    write_file(cluster_file, as_list(objects))
    error = process.wait_for("ERROR", timeout=RELOAD_TIMEOUT)
    assert ask(port, svc("web")) == ("NOERROR", {"2001:db8:0:1::a", "2001:db8:0:2::b"})

    write_file(cluster_file, as_list([*app("web", {"web-a": ["2001:db8:0:1::e"]})]))
    wait_until(
        lambda: ask(port, svc("web")) == ("NOERROR", {"2001:db8:0:1::e"}),
        lambda: f"the fixed file is not served: web {ask(port, svc('web'))}; log {process.lines}",
    )
    assert str(cluster_file) in error, f"the error does not name the file: {error}"
    code = process.stop()
    no_traceback(process)
    assert code == 0


# -- 3. input formats ------------------------------------------------------------------------------

EXPECTED = {
    (svc("web"), "AAAA"): ("NOERROR", {"2001:db8:0:1::a", "2001:db8:0:2::b"}),
    (svc("web"), "A"): ("NOERROR", {"203.0.113.10", "203.0.113.11"}),
    (svc("api"), "AAAA"): ("NOERROR", {"2001:db8:0:3::1"}),
    (svc("app", "other"), "AAAA"): ("NOERROR", {"2001:db8:0:4::1"}),
    (f"web-b.{svc('web')}", "AAAA"): ("NOERROR", {"2001:db8:0:2::b"}),
    (f"_http._tcp.{svc('web')}", "SRV"): (
        "NOERROR",
        {f"0 1 80 web-a.{svc('web')}", f"0 1 80 web-b.{svc('web')}"},
    ),
    (pod_fqdn("web-a"), "AAAA"): ("NOERROR", {"2001:db8:0:1::a"}),
    (pod_fqdn("app-0", "other"), "AAAA"): ("NOERROR", {"2001:db8:0:4::1"}),
    (ptr("2001:db8:0:1::a"), "PTR"): ("NOERROR", {pod_fqdn("web-a")}),
    (ptr("203.0.113.11"), "PTR"): ("NOERROR", {pod_fqdn("web-b")}),
    (svc("missing"), "AAAA"): ("NXDOMAIN", set()),
}


def answers_of(port: int) -> dict[tuple[str, str], tuple[str, set[str]]]:
    return {(name, rdtype): ask(port, name, rdtype) for name, rdtype in EXPECTED}


FORMATS = {"list": as_list, "json": as_json, "documents": as_documents, "typed-lists": as_typed_lists}


def test_yaml_json_documents_and_typed_lists_serve_the_same_answers(
    dnsd_process: type[DnsdProcess], tmp_path: Path
) -> None:
    processes = {}
    for name, render in FORMATS.items():
        path = tmp_path / f"cluster-{name}.{'json' if name == 'json' else 'yaml'}"
        path.write_text(render(base_objects()), encoding="utf-8")
        processes[name] = dnsd_process(as_args(options(path)))
    for process in processes.values():  # started in parallel, awaited one by one
        process.ready()
    for name, process in processes.items():
        assert answers_of(process.port) == EXPECTED, name


@pytest.mark.parametrize("render", [as_list, as_json], ids=["yaml", "json"])
def test_from_file_dash_reads_stdin(
    dnsd_process: type[DnsdProcess], render: Callable[[Sequence[Mapping[str, Any]]], str]
) -> None:
    process = launch(dnsd_process, "flags", "-", stdin=render(base_objects()).encode())
    assert answers_of(process.port) == EXPECTED
    time.sleep(1.5)  # stdin is read once: still serving after EOF and a reload interval
    assert ask(process.port, svc("web")) == EXPECTED[(svc("web"), "AAAA")]
    assert process.stop() == 0
    no_traceback(process)


def test_check_reads_stdin() -> None:
    result = run_dnsd("--check", "--zone", ZONE, "--from-file", "-", stdin=as_json(base_objects()))
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout, result.stdout
    assert "3 Services, 4 EndpointSlices, 4 Pods" in result.stdout, result.stdout


# -- 5. the environment ----------------------------------------------------------------------------


def test_environment_configures_everything(dnsd_process: type[DnsdProcess], cluster_file: Path) -> None:
    process = dnsd_process(
        [],
        env={
            "DNSD_ZONE": "a.example,b.example",
            "DNSD_FROM_FILE": str(cluster_file),
            "DNSD_LISTEN": "127.0.0.1:0",
            "DNSD_TTL": "42",
        },
    ).ready()
    for zone in ("a.example", "b.example"):
        response = query(process.port, svc("web", zone=zone))
        assert rcode(response) == "NOERROR", zone
        assert records(response, "AAAA") == {"2001:db8:0:1::a", "2001:db8:0:2::b"}, zone
        assert ttls(response) == {42}, zone
    assert ask(process.port, svc("web", zone=ZONE))[0] == "REFUSED"


def test_command_line_wins_over_environment(dnsd_process: type[DnsdProcess], cluster_file: Path) -> None:
    process = dnsd_process(
        [
            *("--zone", "b.example", "--ttl", "17", "--pod-records", "true"),
            *("--from-file", str(cluster_file), "--listen", "127.0.0.1:0"),
        ],
        env={
            "DNSD_ZONE": "a.example",
            "DNSD_TTL": "42",
            "DNSD_FROM_FILE": str(cluster_file.with_name("missing.yaml")),
            "DNSD_LISTEN": "nonsense",
            "DNSD_POD_RECORDS": "false",
        },
    ).ready()
    response = query(process.port, svc("web", zone="b.example"))
    assert records(response, "AAAA") == {"2001:db8:0:1::a", "2001:db8:0:2::b"}
    assert ttls(response) == {17}
    assert ask(process.port, svc("web", zone="a.example"))[0] == "REFUSED"
    assert ask(process.port, pod_fqdn("web-a", zone="b.example")) == ("NOERROR", {"2001:db8:0:1::a"})


def test_switches_from_environment(tmp_path: Path) -> None:
    result = run_dnsd(env={"DNSD_CHECK": "1", "DNSD_DEMO": "true"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout
    assert "gua.example.com" in result.stdout


def test_bad_environment_value_is_a_usage_error(cluster_file: Path) -> None:
    result = run_dnsd(env={"DNSD_ZONE": ZONE, "DNSD_FROM_FILE": str(cluster_file), "DNSD_TTL": "abc"})
    assert result.returncode == 2
    assert "abc" in assert_one_error_line(result)


# -- 6. --check, errors and --help -----------------------------------------------------------------


def test_check_accepts_a_good_configuration(cluster_file: Path) -> None:
    result = run_dnsd("--check", *as_args(options(cluster_file)))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = (result.stdout + result.stderr).splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("dnsd: ") and "OK" in lines[0], lines[0]
    assert ZONE in lines[0] and str(cluster_file) in lines[0], lines[0]


BROKEN_FILES = {
    "invalid-yaml": BROKEN_YAML,
    "invalid-json": '{"apiVersion": "v1", "kind": "List", "items": [\n',
    "not-objects": "just a string\n",
    "items-not-a-list": "apiVersion: v1\nkind: List\nitems: {a: 1}\n",
    "endpointslice-ports-not-a-list": as_documents(
        [{**endpoint_slice("web", "default", "IPv6", {"web-a": "2001:db8::1"}), "ports": 5}]
    ),
    "pod-ips-not-a-list": as_documents([{**pod("web-a", "default", []), "status": {"podIPs": 5}}]),
}


@pytest.mark.parametrize("content", BROKEN_FILES.values(), ids=BROKEN_FILES.keys())
def test_check_rejects_a_broken_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(content, encoding="utf-8")
    result = run_dnsd("--check", "--zone", ZONE, "--from-file", str(path))
    assert result.returncode == 1, result
    assert str(path) in assert_one_error_line(result)


def test_check_rejects_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    result = run_dnsd("--check", "--zone", ZONE, "--from-file", str(path))
    assert result.returncode == 1
    assert str(path) in assert_one_error_line(result)


# (flag arguments added to a valid configuration, what the error must mention)
BAD_VALUES = {
    "ttl-not-a-number": (["--ttl", "abc"], "--ttl"),
    "ttl-negative": (["--ttl", "-1"], "--ttl"),
    "ttl-above-max-ttl": (["--ttl", "400"], "--ttl"),
    "max-ttl-zero": (["--max-ttl", "0"], "--max-ttl"),
    "listen-nonsense": (["--listen", "nonsense"], "--listen"),
    "listen-hostname": (["--listen", "localhost:53"], "--listen"),
    "listen-port-too-big": (["--listen", "127.0.0.1:65536"], "--listen"),
    "listen-ipv6-unbracketed": (["--listen", "::1:53"], "--listen"),
    "listen-twice": (["--listen", "127.0.0.1:0"], "--listen"),
    "zone-empty": (["--zone", ""], "--zone"),
    "zone-root": (["--zone", "."], "--zone"),
    "zone-wildcard": (["--zone", "*.example.com"], "--zone"),
    "zone-twice": (["--zone", ZONE], "--zone"),
    "prefix-host-bits": (["--publish-prefix", "2001:db8::1/32"], "--publish-prefix"),
    "prefix-nonsense": (["--publish-prefix", "nonsense"], "--publish-prefix"),
    "expose-default-maybe": (["--expose-default", "maybe"], "--expose-default"),
    "pod-records-maybe": (["--pod-records", "maybe"], "--pod-records"),
    "max-answers-zero": (["--max-answers", "0"], "--max-answers"),
    "soa-timers-three": (["--soa-timers", "1,2,3"], "--soa-timers"),
    "soa-timers-words": (["--soa-timers", "a,b,c,d"], "--soa-timers"),
    "soa-rname-bad": (["--soa-rname", "a..b"], "--soa-rname"),
    "ns-bad-address": (["--ns", "ns1.gua.example.com=not-an-ip"], "--ns"),
    "ns-address-outside-zones": (["--ns", "ns1.example.net=2001:db8::53"], "--ns"),
    "tcp-idle-timeout-zero": (["--tcp-idle-timeout", "0"], "--tcp-idle-timeout"),
    "log-level-loud": (["--log-level", "loud"], "--log-level"),
    "log-format-xml": (["--log-format", "xml"], "--log-format"),
    "demo-with-file": (["--demo"], "--demo"),
}


@pytest.mark.parametrize("extra,mentions", BAD_VALUES.values(), ids=BAD_VALUES.keys())
@pytest.mark.parametrize("check", [False, True], ids=["serve", "check"])
def test_bad_value_is_one_error_line(cluster_file: Path, extra: list[str], mentions: str, check: bool) -> None:
    result = run_dnsd(*(["--check"] if check else []), *as_args(options(cluster_file)), *extra)
    assert result.returncode == (1 if check else 2), result
    assert mentions in assert_one_error_line(result)


def test_reverse_zone_alone_is_an_error(cluster_file: Path) -> None:
    result = run_dnsd(*as_args(options(cluster_file, zones=[REVERSE6])))
    assert result.returncode == 2
    assert "--zone" in assert_one_error_line(result)


@pytest.mark.parametrize(
    "args",
    [
        ["--bogus"],
        ["--zone"],
        ["--ttl"],
        ["--check", "--listen"],
        ["--check=yes"],
        ["positional"],
    ],
    ids=[
        "unknown-flag",
        "zone-without-value",
        "ttl-without-value",
        "check-listen-without-value",
        "switch-value",
        "pos",
    ],
)
def test_usage_errors_exit_2(cluster_file: Path, args: list[str]) -> None:
    result = run_dnsd("--zone", ZONE, "--from-file", str(cluster_file), "--listen", "127.0.0.1:0", *args)
    assert result.returncode == 2, result
    assert_one_error_line(result)


def test_no_zone_is_an_error(cluster_file: Path) -> None:
    result = run_dnsd("--from-file", str(cluster_file), "--listen", "127.0.0.1:0")
    assert result.returncode == 2
    assert "zone" in assert_one_error_line(result)
    checked = run_dnsd("--check", "--from-file", str(cluster_file))
    assert checked.returncode == 1
    assert "zone" in assert_one_error_line(checked)


def test_no_file_and_no_cluster_is_an_error(tmp_path: Path) -> None:
    """Without --from-file dnsd watches a cluster; with no cluster configuration it says so."""
    env = {"KUBECONFIG": str(tmp_path / "absent"), "HOME": str(tmp_path)}
    result = run_dnsd("--zone", ZONE, "--listen", "127.0.0.1:0", env=env)
    assert result.returncode == 1
    line = assert_one_error_line(result)
    assert "cluster configuration" in line and "--from-file" in line


def test_missing_file_without_check_fails_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    result = run_dnsd("--zone", ZONE, "--from-file", str(path), "--listen", "127.0.0.1:0")
    assert result.returncode != 0
    assert str(path) in assert_one_error_line(result)


def test_abbreviated_check_is_check_or_unknown(cluster_file: Path) -> None:
    """`--chec` must either be --check (then a bad value exits 1) or be rejected as unknown."""
    result = run_dnsd("--chec", *as_args(options(cluster_file)), "--ttl", "abc")
    line = assert_one_error_line(result)
    assert result.returncode == 1 or (result.returncode == 2 and "--chec" in line and "--ttl" not in line), (
        result.returncode,
        line,
    )


ALL_FLAGS = (
    "--zone",
    "--listen",
    "--from-file",
    "--ttl",
    "--max-ttl",
    "--publish-prefix",
    "--namespace",
    "--expose-default",
    "--pod-records",
    "--max-answers",
    "--soa-mname",
    "--soa-rname",
    "--ns",
    "--soa-timers",
    "--tcp-idle-timeout",
    "--log-level",
    "--log-format",
    "--check",
    "--demo",
    "--version",
    "--help",
)


def test_help_lists_every_flag() -> None:
    from dnsd.cli import FLAGS

    result = run_dnsd("--help")
    assert result.returncode == 0
    assert result.stderr == ""
    for flag in {*ALL_FLAGS, *(name for f in FLAGS for name in f.names)}:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", result.stdout), flag
    assert "DNSD_" in result.stdout


def test_version(tmp_path: Path) -> None:
    result = run_dnsd("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"dnsd {dnsd.__version__}"


# -- 7. every flag takes effect (through the command line and through the environment) -----------


@VIA
def test_ttl(dnsd_process: type[DnsdProcess], cluster_file: Path, via: str) -> None:
    process = launch(dnsd_process, via, cluster_file, [("ttl", "17")])
    for name, rdtype in ((svc("web"), "AAAA"), (pod_fqdn("web-a"), "AAAA"), (ZONE, "SOA"), (ZONE, "NS")):
        assert ttls(query(process.port, name, rdtype)) == {17}, (name, rdtype)


@VIA
def test_max_ttl_caps_the_ttl_annotation(dnsd_process: type[DnsdProcess], cluster_file: Path, via: str) -> None:
    process = launch(dnsd_process, via, cluster_file, [("max-ttl", "100")])
    assert ttls(query(process.port, svc("api"))) == {100}
    assert ttls(query(process.port, svc("web"))) == {5}


@VIA
def test_max_answers(dnsd_process: type[DnsdProcess], cluster_file: Path, via: str) -> None:
    process = launch(dnsd_process, via, cluster_file, [("max-answers", "1")])
    seen = set()
    for _ in range(4):
        status, answers = ask(process.port, svc("web"))
        assert status == "NOERROR"
        assert len(answers) == 1, answers
        seen |= answers
    assert seen <= {"2001:db8:0:1::a", "2001:db8:0:2::b"}
    response = query(process.port, svc("web"), "A")
    assert len(response.answer) == 1 and len(response.answer[0]) == 1, response


@VIA
def test_pod_records_false(dnsd_process: type[DnsdProcess], cluster_file: Path, via: str) -> None:
    process = launch(dnsd_process, via, cluster_file, [("pod-records", "false")])
    assert ask(process.port, pod_fqdn("web-a"))[0] == "NXDOMAIN"
    assert ask(process.port, pod_fqdn("app-0", "other"))[0] == "NXDOMAIN"
    assert ask(process.port, ptr("2001:db8:0:1::a"), "PTR")[0] == "NXDOMAIN"
    assert ask(process.port, ptr("203.0.113.10"), "PTR")[0] == "NXDOMAIN"
    assert ask(process.port, svc("web")) == ("NOERROR", {"2001:db8:0:1::a", "2001:db8:0:2::b"})


@VIA
def test_expose_default_false(dnsd_process: type[DnsdProcess], cluster_file: Path, via: str) -> None:
    process = launch(dnsd_process, via, cluster_file, [("expose-default", "false")])
    assert ask(process.port, svc("web"))[0] == "NXDOMAIN"
    assert ask(process.port, svc("app", "other"))[0] == "NXDOMAIN"
    assert ask(process.port, f"_http._tcp.{svc('web')}", "SRV")[0] == "NXDOMAIN"
    assert ask(process.port, svc("api")) == ("NOERROR", {"2001:db8:0:3::1"})


@VIA
def test_namespace(dnsd_process: type[DnsdProcess], cluster_file: Path, via: str) -> None:
    process = launch(dnsd_process, via, cluster_file, [("namespace", "other")])
    assert ask(process.port, svc("app", "other")) == ("NOERROR", {"2001:db8:0:4::1"})
    assert ask(process.port, pod_fqdn("app-0", "other")) == ("NOERROR", {"2001:db8:0:4::1"})
    assert ask(process.port, svc("web"))[0] == "NXDOMAIN"
    assert ask(process.port, svc("api"))[0] == "NXDOMAIN"
    assert ask(process.port, pod_fqdn("web-a"))[0] == "NXDOMAIN"
    assert ask(process.port, ptr("2001:db8:0:1::a"), "PTR")[0] == "NXDOMAIN"


@VIA
def test_publish_prefix(dnsd_process: type[DnsdProcess], cluster_file: Path, via: str) -> None:
    process = launch(
        dnsd_process,
        via,
        cluster_file,
        [("publish-prefix", "2001:db8:0:2::/64"), ("publish-prefix", "203.0.113.10/32")],
    )
    assert ask(process.port, svc("web")) == ("NOERROR", {"2001:db8:0:2::b"})
    assert ask(process.port, svc("web"), "A") == ("NOERROR", {"203.0.113.10"})
    assert ask(process.port, svc("api"))[1] == set()
    assert ask(process.port, pod_fqdn("web-b")) == ("NOERROR", {"2001:db8:0:2::b"})
    assert ask(process.port, pod_fqdn("web-a"))[1] == set()
    assert ask(process.port, pod_fqdn("app-0", "other"))[1] == set()


@VIA
def test_ns_with_glue(dnsd_process: type[DnsdProcess], cluster_file: Path, via: str) -> None:
    process = launch(
        dnsd_process,
        via,
        cluster_file,
        [("ns", "ns1.gua.example.com=2001:db8::53"), ("ns", "ns1.gua.example.com=203.0.113.53")],
    )
    response = query(process.port, ZONE, "NS")
    assert rcode(response) == "NOERROR"
    assert records(response, "NS") == {"ns1.gua.example.com."}
    assert records(response, "AAAA", "additional") == {"2001:db8::53"}
    assert records(response, "A", "additional") == {"203.0.113.53"}
    assert {rrset.name.to_text() for rrset in response.additional} == {"ns1.gua.example.com."}
    assert ask(process.port, "ns1.gua.example.com.", "AAAA") == ("NOERROR", {"2001:db8::53"})
    assert ask(process.port, "ns1.gua.example.com.", "A") == ("NOERROR", {"203.0.113.53"})
    assert ask(process.port, REVERSE6, "NS") == ("NOERROR", {"ns1.gua.example.com."})
    soa = next(iter(query(process.port, ZONE, "SOA").answer[0]))
    assert soa.mname.to_text() == "ns1.gua.example.com."  # the first --ns, without --soa-mname


@VIA
def test_soa_flags(dnsd_process: type[DnsdProcess], cluster_file: Path, via: str) -> None:
    process = launch(
        dnsd_process,
        via,
        cluster_file,
        [
            ("soa-mname", "ns0.example.net"),
            ("soa-rname", "admin.example.net"),
            ("soa-timers", "100,50,7200,10"),
            ("ttl", "30"),
        ],
    )
    for zone in ALL_ZONES:
        response = query(process.port, zone, "SOA")
        soa = next(iter(response.answer[0]))
        assert soa.mname.to_text() == "ns0.example.net.", zone
        assert soa.rname.to_text() == "admin.example.net.", zone
        assert (soa.refresh, soa.retry, soa.expire, soa.minimum) == (100, 50, 7200, 10), zone
        assert response.answer[0].ttl == 30
    negative = query(process.port, svc("missing"))
    assert rcode(negative) == "NXDOMAIN"
    assert [rrset.ttl for rrset in negative.authority] == [10]  # min(TTL, MINIMUM)


@VIA
def test_tcp_idle_timeout(dnsd_process: type[DnsdProcess], cluster_file: Path, via: str) -> None:
    process = launch(dnsd_process, via, cluster_file, [("tcp-idle-timeout", "1")])
    with socket.create_connection(("127.0.0.1", process.port), timeout=2) as conn:
        conn.settimeout(6)
        started = time.monotonic()
        assert conn.recv(1) == b""  # closed by dnsd, not by our timeout
        assert time.monotonic() - started < 4


@VIA
def test_log_level_debug(dnsd_process: type[DnsdProcess], cluster_file: Path, via: str) -> None:
    process = launch(dnsd_process, via, cluster_file, [("log-level", "debug")])
    write_file(cluster_file, as_list(app("web", WEB_PODS)))
    process.wait_for("DEBUG dnsd: serial", timeout=RELOAD_TIMEOUT)


def test_log_level_warning_hides_info(cluster_file: Path, command_process: Callable[..., CommandProcess]) -> None:
    port = free_port()
    process = command_process(
        [
            *(sys.executable, "-m", "dnsd", "--listen", f"127.0.0.1:{port}", "--log-level", "warning"),
            *("--zone", ZONE, "--from-file", str(cluster_file)),
        ],
        cwd=ROOT,
    )
    wait_until(
        lambda: _answers_quietly(port) == {"2001:db8:0:1::a", "2001:db8:0:2::b"},
        lambda: f"not serving on {port}: {process.lines}",
    )
    write_file(cluster_file, BROKEN_YAML)
    process.wait_for("invalid YAML", timeout=RELOAD_TIMEOUT)
    assert process.stop() == 0
    assert not [line for line in process.lines if " INFO " in line], process.lines


def _answers_quietly(port: int) -> set[str] | None:
    try:
        response = dns.query.udp(dns.message.make_query(svc("web"), "AAAA"), "127.0.0.1", port=port, timeout=0.3)
    except (dns.exception.Timeout, OSError):
        return None
    return records(response, "AAAA")


@VIA
def test_log_format_json(dnsd_process: type[DnsdProcess], cluster_file: Path, via: str) -> None:
    # an annotation outside every zone makes a warning at load time
    objects = [*base_objects(), *app("odd", {"odd-0": ["2001:db8:0:6::1"]}, annotations={"dnsd.io/hostname": "x.org"})]
    write_file(cluster_file, as_list(objects))
    process = launch(dnsd_process, via, cluster_file, [("log-format", "json")])
    assert ask(process.port, svc("web"))[0] == "NOERROR"
    write_file(cluster_file, BROKEN_YAML)
    process.wait_for("invalid YAML", timeout=RELOAD_TIMEOUT)
    write_file(cluster_file, as_list(base_objects()))
    process.wait_for("reloaded", timeout=RELOAD_TIMEOUT)
    assert process.stop() == 0
    entries = []
    for line in process.lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"not JSON: {line!r}") from None
        assert isinstance(entry, dict) and {"level", "msg"} <= entry.keys(), line
        entries.append(entry)
    assert {"info", "warning", "error"} <= {e["level"] for e in entries}, entries
    assert any(str(cluster_file) in e["msg"] for e in entries if e["level"] == "error"), entries
    assert any("shutting down" in e["msg"] for e in entries), entries


# -- 8. --demo outside the checkout ----------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_demo_uses_the_packaged_example(
    command: str, command_process: Callable[..., CommandProcess], tmp_path: Path
) -> None:
    assert not (tmp_path / "dnsd").exists()
    process = command_process([*COMMANDS[command](), "--demo", "--listen", "127.0.0.1:0"], cwd=tmp_path).ready()
    assert ask(process.port, "web.default.svc.gua.example.com.") == (
        "NOERROR",
        {"2001:db8:0:1::a", "2001:db8:0:1::b"},
    )
    assert ask(process.port, "www.gua.example.com.", "A") == ("NOERROR", {"203.0.113.10", "203.0.113.11"})
    assert ask(process.port, ptr("203.0.113.10"), "PTR") == (
        "NOERROR",
        {"web-7d4b9c-aaaaa.default.pod.gua.example.com."},
    )
    assert ask(process.port, ptr("2001:db8:0:2::10"), "PTR") == ("NOERROR", {"db-0.default.pod.gua.example.com."})
    assert process.stop() == 0

    checked = run_dnsd("--check", "--demo", cwd=tmp_path, command=COMMANDS[command]())
    assert checked.returncode == 0, checked.stderr
    packaged = Path(dnsd.__file__).resolve().parent / "examples" / "cluster.yaml"
    assert str(packaged) in checked.stdout, checked.stdout


# -- 9. address in use -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_STREAM], ids=["udp", "tcp"])
def test_address_in_use_is_one_clear_error(cluster_file: Path, kind: int) -> None:
    with socket.socket(socket.AF_INET, kind) as holder:
        holder.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            holder.listen()
        port = holder.getsockname()[1]
        result = run_dnsd("--zone", ZONE, "--from-file", str(cluster_file), "--listen", f"127.0.0.1:{port}")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert f"127.0.0.1:{port}" in lines[0], lines[0]
    assert "in use" in lines[0].lower(), lines[0]
