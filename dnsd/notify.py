"""NOTIFY (RFC 1996): tell secondaries that the serial moved, so they transfer within a second.

`serial_changed` (the index's `on_serial`) marks the serial as pending; one send per
`interval` at most goes out to every target for every zone (a burst of serials costs one
NOTIFY, of the latest). Each target is told until it answers NOERROR, retried up to RETRIES
times with the timeout doubling from FIRST_TIMEOUT; a newer serial replaces an unanswered one.
With a TSIG key the NOTIFY is signed, and an answer counts only when its signature verifies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Sequence

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.tsig

from dnsd.config import Listen

log = logging.getLogger("dnsd.notify")

RETRIES = 5
FIRST_TIMEOUT = 1.0


class _Replies(asyncio.DatagramProtocol):
    """Datagrams from one target, handed to whoever waits for that message ID."""

    def __init__(self) -> None:
        self.waiting: dict[int, asyncio.Future[bytes]] = {}

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if len(data) < 12:
            return
        future = self.waiting.get(int.from_bytes(data[:2], "big"))
        if future is not None and not future.done():
            future.set_result(data)

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable: the next try may work
        log.debug("NOTIFY socket error: %s", exc)


class Notifier:
    def __init__(
        self,
        zones: Sequence[dns.name.Name],
        targets: Sequence[Listen],
        *,
        interval: float = 1.0,
        key: dns.tsig.Key | None = None,
        retries: int = RETRIES,
        first_timeout: float = FIRST_TIMEOUT,
    ) -> None:
        self.zones = tuple(zones)
        self.targets = tuple(targets)
        self.interval = interval
        self.key = key
        self.retries = retries
        self.first_timeout = first_timeout
        self.results: Counter[str] = Counter()
        """NOTIFY messages by outcome: acknowledged, error (an rcode other than NOERROR), timeout."""
        self._pending: int | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_send = float("-inf")
        self._tasks: dict[Listen, asyncio.Task[None]] = {}

    def serial_changed(self, serial: int) -> None:
        """Called by the index whenever the serial moved (on the event loop)."""
        if not self.targets:
            return
        self._pending = serial
        if self._timer is not None:
            return  # the scheduled send will carry the latest serial
        loop = asyncio.get_running_loop()
        delay = max(0.0, self._last_send + self.interval - loop.time())
        self._timer = loop.call_later(delay, self._send_pending)

    def _send_pending(self) -> None:
        self._timer = None
        serial, self._pending = self._pending, None
        if serial is None:
            return
        self._last_send = asyncio.get_running_loop().time()
        for target in self.targets:
            previous = self._tasks.get(target)
            if previous is not None and not previous.done():
                previous.cancel()  # a newer serial supersedes the one still being retried
            self._tasks[target] = asyncio.create_task(self._notify(target, serial), name=f"notify {target}")

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        tasks = [task for task in self._tasks.values() if not task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _notify(self, target: Listen, serial: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, replies = await loop.create_datagram_endpoint(_Replies, remote_addr=(target.host, target.port))
        except OSError as exc:
            log.warning("NOTIFY to %s: cannot open a socket: %s", target, exc)
            self.results["error"] += len(self.zones)
            return
        try:
            unanswered = list(self.zones)
            timeout = self.first_timeout
            for attempt in range(1 + self.retries):
                unanswered = [
                    zone
                    for zone, acknowledged in zip(
                        unanswered,
                        await asyncio.gather(*(self._ask(transport, replies, zone, timeout) for zone in unanswered)),
                        strict=True,
                    )
                    if not acknowledged
                ]
                if not unanswered:
                    log.debug("NOTIFY serial %d to %s acknowledged (try %d)", serial, target, attempt + 1)
                    return
                timeout *= 2
            log.warning(
                "NOTIFY serial %d to %s: no NOERROR for %s after %d tries",
                serial, target, ", ".join(str(z) for z in unanswered), 1 + self.retries,
            )  # fmt: skip
        finally:
            transport.close()

    async def _ask(
        self, transport: asyncio.DatagramTransport, replies: _Replies, zone: dns.name.Name, timeout: float
    ) -> bool:
        """Send one NOTIFY for zone; whether the target acknowledged it with NOERROR in time."""
        query = dns.message.make_query(zone, dns.rdatatype.SOA, dns.rdataclass.IN)
        query.flags = dns.flags.AA  # (the opcode lives in the flags word: set it after)
        query.set_opcode(dns.opcode.NOTIFY)
        while query.id in replies.waiting:
            query.id = (query.id + 1) & 0xFFFF
        if self.key is not None:
            query.use_tsig({self.key.name: self.key}, self.key.name, algorithm=self.key.algorithm)
        data = query.to_wire()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        future: asyncio.Future[bytes] = loop.create_future()
        replies.waiting[query.id] = future
        try:
            transport.sendto(data)
            async with asyncio.timeout(timeout):
                while True:
                    reply = await future
                    answer = self._parse(reply, query)
                    if answer is not None:
                        break
                    future = replies.waiting[query.id] = loop.create_future()
        except TimeoutError:
            self.results["timeout"] += 1
            return False
        finally:
            replies.waiting.pop(query.id, None)
        if answer.rcode() != dns.rcode.NOERROR:
            self.results["error"] += 1
            log.info("NOTIFY for %s answered %s", zone, dns.rcode.to_text(answer.rcode()))
            await asyncio.sleep(max(0.0, deadline - loop.time()))  # back off as if it had not answered
            return False
        self.results["acknowledged"] += 1
        return True

    def _parse(self, reply: bytes, query: dns.message.Message) -> dns.message.Message | None:
        """The reply as a message if it answers query (signed properly when we signed), else None."""
        keyring = {self.key.name: self.key} if self.key is not None else None
        with contextlib.suppress(dns.exception.DNSException, ValueError):
            answer = dns.message.from_wire(reply, keyring=keyring, request_mac=query.mac if keyring else b"")
            if (
                answer.flags & dns.flags.QR
                and answer.opcode() == dns.opcode.NOTIFY
                and (keyring is None or answer.had_tsig)
            ):
                return answer
        return None
