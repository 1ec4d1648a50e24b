"""The README tells the truth: its flags table is the parser's, and its dig commands answer."""

from __future__ import annotations

import re
import shlex
import subprocess

from conftest import ROOT, DnsdProcess

from dnsd.cli import FLAGS, build_parser, flags_markdown

README = (ROOT / "README.md").read_text()


def test_flags_table_is_generated_from_the_parser() -> None:
    table = README.split("<!-- flags:begin", 1)[1].split("-->", 1)[1].split("<!-- flags:end -->", 1)[0]
    assert table.strip() == flags_markdown().strip()


def test_every_parser_option_is_in_the_table() -> None:
    documented = {name for flag in FLAGS for name in flag.names}
    options = {
        option
        for action in build_parser()._actions
        for option in action.option_strings
        if option.startswith("--") and option not in ("--help", "--version")
    }
    assert options == documented


def test_quick_start_dig_commands_answer(dnsd_process: type[DnsdProcess]) -> None:
    quick_start = README.split("## Quick start", 1)[1].split("## Tests", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in quick_start.splitlines() if line.startswith("dig ")]
    assert len(commands) >= 4
    server = dnsd_process(
        [
            "--zone",
            "gua.example.com",
            "--zone",
            "8.b.d.0.1.0.0.2.ip6.arpa",
            "--zone",
            "113.0.203.in-addr.arpa",
            "--from-file",
            "examples/cluster.yaml",
            "--listen",
            "[::1]:0",
        ]
    ).ready()
    for command in commands:
        argv = [*shlex.split(command.replace("-p 5353", f"-p {server.port}")), "+time=2", "+tries=1"]
        output = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
        assert "status: NOERROR" in output, (command, output)
        assert re.search(r"ANSWER: [1-9]", output), (command, output)
