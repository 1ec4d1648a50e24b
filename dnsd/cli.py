"""The command line: flags and `DNSD_<NAME>` environment variables -> a validated Config.

Every flag can also be set as an environment variable named after it (`--max-ttl` is
`DNSD_MAX_TTL`); repeatable flags take a comma-separated list there. A flag on the command
line wins over the environment. Errors are one line on stderr: exit 2 for a bad flag, exit 1
for a `--check` that finds the configuration or the file invalid.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, NoReturn

from dnsd import __version__
from dnsd.config import (
    UDP_BATCHING,
    Config,
    ConfigError,
    Listen,
    merge_nameservers,
    parse_bool,
    parse_domain,
    parse_float,
    parse_int,
    parse_listen,
    parse_nameserver,
    parse_prefix,
    parse_soa_timers,
    parse_transfer_to,
    parse_zone,
    validate,
)

DEMO_ZONES = ("gua.example.com", "8.b.d.0.1.0.0.2.ip6.arpa", "113.0.203.in-addr.arpa")
LOG_LEVELS = ("debug", "info", "warning", "error")


class UsageError(Exception):
    """A flag is unknown, malformed or missing its value."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


@dataclass(frozen=True)
class Flag:
    names: tuple[str, ...]
    help: str
    metavar: str | None = None
    repeatable: bool = False
    switch: bool = False
    default: str | None = None

    @property
    def dest(self) -> str:
        return self.names[0].lstrip("-").replace("-", "_")

    @property
    def env(self) -> str:
        return "DNSD_" + self.dest.upper()


FLAGS: tuple[Flag, ...] = (
    Flag(("--zone",), "zone to serve authoritatively, forward or reverse (repeatable)", "NAME", repeatable=True),
    Flag(
        ("--listen",),
        "UDP and TCP address to listen on (repeatable; default [::]:5353, dual stack)",
        "HOST:PORT",
        repeatable=True,
    ),
    Flag(
        ("--from-file",),
        "serve the Kubernetes objects in this YAML/JSON file ('-' = stdin), reloaded on change",
        "PATH",
    ),
    Flag(
        ("--kubeconfig",),
        "kubeconfig to reach the API server (default: in-cluster service account when in a "
        "pod, else $KUBECONFIG or ~/.kube/config)",
        "PATH",
    ),
    Flag(("--context",), "kubeconfig context (default: the current one)", "NAME"),
    Flag(("--label-selector",), "publish only Services matching this label selector", "SELECTOR"),
    Flag(
        ("--watch-stall-timeout",), "seconds without a byte after which a watch counts as dead", "SECONDS", default="90"
    ),
    Flag(("--ttl",), "TTL of answers, seconds", "SECONDS", default="5"),
    Flag(("--max-ttl",), "upper bound for the dnsd.io/ttl annotation, seconds", "SECONDS", default="300"),
    Flag(
        ("--publish-prefix",),
        "publish only addresses in these prefixes (repeatable; replaces the default "
        "policy: IPv6 2000::/3, IPv4 outside private/shared/loopback/link-local)",
        "CIDR",
        repeatable=True,
    ),
    Flag(("--namespace",), "serve only these namespaces (repeatable; default all)", "NS", repeatable=True),
    Flag(
        ("--expose-default",),
        "publish Services without a dnsd.io/expose annotation",
        "true|false",
        default="true",
    ),
    Flag(
        ("--pod-records",),
        "publish <pod>.<ns>.pod.<zone> names and their PTR records",
        "true|false",
        default="true",
    ),
    Flag(("--max-answers",), "most records in one answer (default: all that fit in 64 KiB)", "N"),
    Flag(("--soa-mname",), "SOA primary name server (default: the first --ns, else ns.dns.<zone>)", "NAME"),
    Flag(("--soa-rname",), "SOA mailbox (default: hostmaster.<zone>)", "NAME"),
    Flag(
        ("--ns",),
        "apex NS target; an in-zone target with =ADDR answers A/AAAA (repeatable)",
        "NAME[=ADDR]",
        repeatable=True,
    ),
    Flag(
        ("--soa-timers",),
        "SOA timers; MINIMUM also caps the negative-answer TTL",
        "REFRESH,RETRY,EXPIRE,MINIMUM",
        default="60,30,3600,5",
    ),
    Flag(
        ("--http",),
        "address of /healthz, /readyz and /metrics; 'off' switches them off",
        "HOST:PORT",
        default="[::]:8080",
    ),
    Flag(
        ("--lameduck",),
        "seconds to keep answering after SIGTERM while /readyz says 503 (a second signal ends it)",
        "SECONDS",
        default="5",
    ),
    Flag(("--tcp-idle-timeout",), "seconds an idle TCP connection stays open", "SECONDS", default="30"),
    Flag(
        ("--tcp-max-connections",),
        "open TCP connections at most; beyond it the longest-idle one is closed for the new one",
        "N",
        default="1000",
    ),
    Flag(
        ("--udp-batching",),
        "UDP in batches with recvmmsg/sendmmsg where the platform has them, the common queries "
        "answered in C (c; python where the extension is not built) or all in Python (python); "
        "off: one datagram per call",
        "c|python|off",
        default="c",
    ),
    Flag(
        ("--rrl",),
        "response rate limiting: UDP responses per second per source /24 or /56 and response "
        "(0 = off; see Reliability in the README)",
        "RESPONSES_PER_SECOND",
        default="0",
    ),
    Flag(
        ("--rrl-slip",),
        "every Nth rate-limited response is sent as TC=1, the others dropped (0 = none)",
        "N",
        default="2",
    ),
    # zone transfers (a single transfer primary; see "Zone transfers" in the README)
    Flag(
        ("--transfer-to",),
        "allow AXFR/IXFR from these clients (repeatable); makes this instance a transfer primary "
        "that keeps an IXFR journal and sends NOTIFY",
        "CIDR",
        repeatable=True,
    ),
    Flag(
        ("--tsig-key",),
        "transfers must be TSIG-signed with a key from this file (BIND key blocks or NAME:ALGORITHM:SECRET "
        "lines); NOTIFY is signed with the first",
        "FILE",
    ),
    Flag(("--notify",), "secondary to send NOTIFY to when the serial moves (repeatable)", "HOST:PORT", repeatable=True),
    Flag(("--notify-interval",), "at most one NOTIFY per this many seconds", "SECONDS", default="1"),
    Flag(("--log-level",), "debug, info, warning or error", "LEVEL", default="info"),
    Flag(("--log-format",), "text or json (one object per line)", "FORMAT", default="text"),
    Flag(("--check",), "validate the configuration and the file, then exit 0 (valid) or 1", switch=True),
    Flag(
        ("--demo",),
        "serve the bundled example cluster (zone gua.example.com unless --zone is given)",
        switch=True,
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dnsd",
        allow_abbrev=False,
        description="Authoritative DNS for Kubernetes pods' global addresses (AAAA/A, SRV, PTR).",
        epilog="Every flag can be set as DNSD_<NAME> in the environment, e.g. DNSD_ZONE=a.example,b.example.",
    )
    for flag in FLAGS:
        if flag.switch:
            parser.add_argument(*flag.names, action="store_true", help=flag.help)
        elif flag.repeatable:
            parser.add_argument(*flag.names, action="append", metavar=flag.metavar, help=flag.help)
        else:
            help_text = flag.help + (f" (default {flag.default})" if flag.default else "")
            parser.add_argument(*flag.names, metavar=flag.metavar, help=help_text)
    parser.add_argument("--version", action="version", version=f"dnsd {__version__}")
    return parser


def _merged(args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, Any]:
    """Flag values, falling back to the environment and then to the defaults."""
    values: dict[str, Any] = {}
    for flag in FLAGS:
        given = getattr(args, flag.dest)
        from_env = env.get(flag.env)
        if flag.switch:
            values[flag.dest] = given or (from_env is not None and parse_bool(from_env, flag=flag.env))
        elif flag.repeatable:
            if given is None and from_env:
                given = [part for part in from_env.replace(" ", ",").split(",") if part]
            values[flag.dest] = given or []
        else:
            values[flag.dest] = given if given is not None else from_env if from_env is not None else flag.default
    return values


def _bundled_example() -> str:
    return str(resources.files("dnsd") / "examples" / "cluster.yaml")


def load(argv: Sequence[str], env: Mapping[str, str]) -> tuple[Config, dict[str, Any]]:
    """Parse and validate; raises UsageError or ConfigError."""
    args = build_parser().parse_args(list(argv))
    try:
        return _load(args, env)
    except ConfigError as exc:
        # Name the environment variable when that is where the bad value came from.
        flag = next((f for f in FLAGS if str(exc).startswith(f.names[0] + ":")), None)
        if flag is not None and getattr(args, flag.dest) in (None, [], False) and flag.env in env:
            raise ConfigError(f"{flag.env} (environment): {exc}") from None
        raise


def _load(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[Config, dict[str, Any]]:
    values = _merged(args, env)
    zones = [parse_zone(z) for z in values["zone"]]
    from_file = values["from_file"]
    if values["demo"]:
        if from_file:
            raise ConfigError("--demo serves the bundled example; leave out --from-file")
        from_file = _bundled_example()
        if not zones:
            zones = [parse_zone(z) for z in DEMO_ZONES]
    if values["log_level"].lower() not in LOG_LEVELS:
        raise ConfigError(f"--log-level: {values['log_level']!r} is not one of {', '.join(LOG_LEVELS)}")
    if values["log_format"] not in ("text", "json"):
        raise ConfigError(f"--log-format: {values['log_format']!r} is not text or json")
    if values["udp_batching"] not in UDP_BATCHING:
        raise ConfigError(f"--udp-batching: {values['udp_batching']!r} is not one of {', '.join(UDP_BATCHING)}")

    def optional(text: str | None, parse: Callable[[str], Any]) -> Any:
        return None if text in (None, "") else parse(text)

    config = Config(
        zones=tuple(zones),
        listen=tuple(parse_listen(x) for x in values["listen"]) or (Listen("::", 5353),),
        from_file=from_file,
        ttl=parse_int(values["ttl"], flag="--ttl", low=0, high=2**31 - 1),
        max_ttl=parse_int(values["max_ttl"], flag="--max-ttl", low=1, high=2**31 - 1),
        publish_prefixes=tuple(parse_prefix(p) for p in values["publish_prefix"]),
        namespaces=frozenset(values["namespace"]),
        expose_default=parse_bool(values["expose_default"], flag="--expose-default"),
        pod_records=parse_bool(values["pod_records"], flag="--pod-records"),
        max_answers=optional(values["max_answers"], lambda t: parse_int(t, flag="--max-answers", low=1)),
        soa_mname=optional(values["soa_mname"], lambda t: parse_domain(t, flag="--soa-mname")),
        soa_rname=optional(values["soa_rname"], lambda t: parse_domain(t, flag="--soa-rname")),
        ns=merge_nameservers([parse_nameserver(n) for n in values["ns"]]),
        soa_timers=parse_soa_timers(values["soa_timers"]),
        log_level=values["log_level"].lower(),
        log_format=values["log_format"],
        tcp_idle_timeout=float(parse_int(values["tcp_idle_timeout"], flag="--tcp-idle-timeout", low=1)),
        tcp_max_connections=parse_int(values["tcp_max_connections"], flag="--tcp-max-connections", low=1),
        udp_batching=values["udp_batching"],
        rrl=parse_int(values["rrl"], flag="--rrl", low=0),
        rrl_slip=parse_int(values["rrl_slip"], flag="--rrl-slip", low=0, high=100),
        lameduck=parse_float(values["lameduck"], flag="--lameduck"),
        http=None if values["http"].strip().lower() in ("off", "") else parse_listen(values["http"], "--http"),
        kubeconfig=values["kubeconfig"] or None,
        context=values["context"] or None,
        label_selector=values["label_selector"] or None,
        watch_stall_timeout=float(parse_int(values["watch_stall_timeout"], flag="--watch-stall-timeout", low=1)),
        transfer_to=tuple(parse_transfer_to(p) for p in values["transfer_to"]),
        tsig_key=values["tsig_key"] or None,
        notify=tuple(parse_listen(n, "--notify") for n in values["notify"]),
        notify_interval=parse_float(values["notify_interval"], flag="--notify-interval", low=0.0, high=3600.0),
    )
    validate(config)
    if config.tsig_key is not None:
        from dnsd.transfer import KeyFileError, load_keys

        try:
            load_keys(config.tsig_key)
        except KeyFileError as exc:
            raise ConfigError(str(exc)) from None
    if config.from_file is not None and (config.kubeconfig or config.context or config.label_selector):
        raise ConfigError("--from-file serves a file; --kubeconfig, --context and --label-selector are for a cluster")
    return config, values


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    from dnsd import app, logs
    from dnsd.names import AddressPolicy
    from dnsd.sources.file import FileError, read_records

    argv = sys.argv[1:] if argv is None else argv
    env = os.environ if env is None else env
    checking = "--check" in argv or env.get("DNSD_CHECK", "").lower() in ("1", "true", "yes", "on")
    try:
        config, _values = load(argv, env)
    except UsageError as exc:
        print(f"dnsd: error: {exc} (see dnsd --help)", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"dnsd: error: {exc}", file=sys.stderr)
        return 1 if checking else 2
    logs.configure(config.log_level, config.log_format)
    records = None
    zones = ", ".join(str(z) for z in config.zones)
    if config.from_file is not None:
        try:
            records = read_records(config.from_file, AddressPolicy(config.publish_prefixes))
        except FileError as exc:
            print(f"dnsd: error: {exc}", file=sys.stderr)
            return 1
        if checking:
            counts = ", ".join(f"{len(v)} {k}s" for k, v in records.items())
            print(f"dnsd: configuration OK: zones {zones}; {config.from_file}: {counts}")
            return 0
    else:
        from dnsd.sources.kubernetes import Credentials

        credentials = Credentials(config.kubeconfig, config.context)
        try:
            credentials.reload()
        except Exception as exc:  # the loaders raise many types; all mean "cannot reach the cluster"
            print(
                f"dnsd: error: cannot load the cluster configuration ({exc}); "
                "give --kubeconfig, or --from-file to serve a file",
                file=sys.stderr,
            )
            return 1
        if checking:
            print(f"dnsd: configuration OK: zones {zones}; cluster {credentials.host} ({credentials.source})")
            return 0
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(app.run(config, records))
    except KeyboardInterrupt:
        return 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (`pip install 'dnsd[uvloop]'`), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def flags_markdown() -> str:
    """The flags table of the README, generated from FLAGS so the two cannot drift."""
    rows = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    for flag in FLAGS:
        name = flag.names[0] + (f" {flag.metavar}" if flag.metavar and not flag.switch else "")
        name = name.replace("|", "\\|")
        default = flag.default or ("off" if flag.switch else "")
        meaning = flag.help.replace("|", "\\|").replace("<", "&lt;")
        rows.append(f"| `{name}` | `{flag.env}` | {default and f'`{default}`'} | {meaning} |")
    return "\n".join(rows) + "\n"
