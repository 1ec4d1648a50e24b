"""Batched UDP I/O: up to `count` datagrams per `recvmmsg` and replies per `sendmmsg` (Linux).

The standard library has neither call. Through ctypes, with every buffer allocated once, a
batch costs two foreign calls however many datagrams it carries, where `recvfrom`/`sendto`
cost two system calls and two Python-level calls per datagram (shared/research/perf-baseline.md
§6.4: 7.5 -> 5.6 us per query). Fields are read and written through memoryviews of the
preallocated arrays, not ctypes attribute access, which costs more than the system call saves.

Replies leave from the address their query arrived at: the control data received with a
query (IPV6_PKTINFO / IP_PKTINFO, when the socket asked for it) goes back with its reply.
`available()` says whether this platform has the calls; the listener falls back otherwise.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import socket
import struct
import sys

MSG_DONTWAIT = 0x40
MSG_TRUNC = 0x20
SOCKADDR_SIZE = 128  # sizeof(struct sockaddr_storage)
CONTROL_SIZE = 64  # room for one IPV6_PKTINFO or IP_PKTINFO message
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
_V4_MAPPED = b"\0" * 10 + b"\xff\xff"
_SOCKADDR_LENGTH = {socket.AF_INET: 16, socket.AF_INET6: 28}
_CMSG_HEADER = struct.Struct("@NiI")  # cmsg_len, cmsg_level, cmsg_type (int, padded to 16 bytes on LP64)


class _IoVec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("length", ctypes.c_size_t))


class _MsgHdr(ctypes.Structure):
    _fields_ = (
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.c_void_p),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    )


class _MMsgHdr(ctypes.Structure):
    _fields_ = (("hdr", _MsgHdr), ("length", ctypes.c_uint))


_WORD = ctypes.sizeof(ctypes.c_size_t)
_MMSG_WORDS = ctypes.sizeof(_MMsgHdr) // _WORD
# Word offsets of the fields this module writes or reads, in one mmsghdr.
_NAME, _NAMELEN, _CONTROL, _CONTROLLEN = (
    getattr(_MsgHdr, field).offset // _WORD for field in ("name", "namelen", "control", "controllen")
)
_FLAGS_WORD = _MsgHdr.flags.offset // _WORD
_LENGTH_WORD = _MMsgHdr.length.offset // _WORD
_IOV_LENGTH = _IoVec.length.offset // _WORD


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.recvmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p)
        libc.sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def available() -> bool:
    return _LIBC is not None and struct.calcsize("P") == 8 and sys.byteorder == "little"


class DatagramBatch:
    """Preallocated receive and send arrays for one UDP socket."""

    def __init__(self, sock: socket.socket, count: int = 64, size: int = 65535, *, pktinfo: bool = False) -> None:
        if _LIBC is None:
            raise OSError(errno.ENOSYS, "recvmmsg/sendmmsg are not available")
        self.fd = sock.fileno()
        self.count, self.size, self.pktinfo = count, size, pktinfo
        # Anonymous mappings, not ctypes buffers: a page is resident only once a datagram is
        # written to it, so 64 slots of 64 KiB cost what the datagrams use, not 8 MiB.
        self._recv_map, self._send_map = mmap.mmap(-1, count * size), mmap.mmap(-1, count * size)
        self._recv_data = (ctypes.c_char * (count * size)).from_buffer(self._recv_map)
        self._send_data = (ctypes.c_char * (count * size)).from_buffer(self._send_map)
        self._names = ctypes.create_string_buffer(count * SOCKADDR_SIZE)
        self._recv_control = ctypes.create_string_buffer(count * CONTROL_SIZE)
        self._send_control = ctypes.create_string_buffer(count * CONTROL_SIZE)
        self._recv_iov = (_IoVec * count)()
        self._send_iov = (_IoVec * count)()
        self._recv = (_MMsgHdr * count)()
        self._send = (_MMsgHdr * count)()
        data, send_data = ctypes.addressof(self._recv_data), ctypes.addressof(self._send_data)
        names = ctypes.addressof(self._names)
        for i in range(count):
            self._recv_iov[i].base, self._recv_iov[i].length = data + i * size, size
            self._send_iov[i].base = send_data + i * size
            header = self._recv[i].hdr
            header.name, header.iov, header.iovlen = names + i * SOCKADDR_SIZE, ctypes.addressof(self._recv_iov[i]), 1
            self._send[i].hdr.iov, self._send[i].hdr.iovlen = ctypes.addressof(self._send_iov[i]), 1
            self._send[i].hdr.namelen = _SOCKADDR_LENGTH[sock.family]
            if pktinfo:
                self._send[i].hdr.control = ctypes.addressof(self._send_control) + i * CONTROL_SIZE
        self._recv_words = memoryview(self._recv).cast("B").cast("Q")
        self._send_words = memoryview(self._send).cast("B").cast("Q")
        self._send_iov_words = memoryview(self._send_iov).cast("B").cast("Q")
        self._data = memoryview(self._recv_data).cast("B")
        self._outgoing = memoryview(self._send_data).cast("B")
        self._name_bytes = memoryview(self._names).cast("B")
        self._recv_control_bytes = memoryview(self._recv_control).cast("B")
        self._send_control_bytes = memoryview(self._send_control).cast("B")
        self._recv_control_base = ctypes.addressof(self._recv_control)
        self._send_control_base = ctypes.addressof(self._send_control)
        self._names_base = names
        self._queued = 0
        self._pending_reset = 0
        self._reset(count)

    def _reset(self, used: int) -> None:
        """Restore the lengths the kernel overwrote in the last used headers."""
        words = self._recv_words
        for i in range(used):
            base = i * _MMSG_WORDS
            words[base + _NAMELEN] = SOCKADDR_SIZE
            if self.pktinfo:
                words[base + _CONTROL] = self._recv_control_base + i * CONTROL_SIZE
                words[base + _CONTROLLEN] = CONTROL_SIZE

    def receive(self) -> int:
        """Read up to `count` datagrams without blocking; 0 when none is waiting. The previous
        batch's datagrams and peers are gone after this (queued replies must be sent first)."""
        self._reset(self._pending_reset)
        self._pending_reset = 0
        received = _LIBC.recvmmsg(self.fd, ctypes.addressof(self._recv), self.count, MSG_DONTWAIT, None)  # type: ignore[union-attr]
        if received < 0:
            code = ctypes.get_errno()
            if code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return 0
            raise OSError(code, os.strerror(code))
        self._pending_reset = received
        return received

    def answer(self, index: object, stats: object, signed_possible: bool) -> range:
        """The datagrams the caller must answer: all of them (the C batch answers some itself)."""
        return range(self._pending_reset)

    def datagram(self, i: int) -> bytes | None:
        """The i-th datagram received, None when it was longer than the buffer."""
        base = i * _MMSG_WORDS
        if self._recv_words[base + _FLAGS_WORD] & MSG_TRUNC:
            return None
        length = self._recv_words[base + _LENGTH_WORD] & 0xFFFFFFFF
        start = i * self.size
        return self._data[start : start + length].tobytes()

    def sender(self, i: int) -> tuple[int, bool]:
        """The i-th sender's port and whether it is a real IPv6 sender, without copying its
        address out (a reply only needs the index: `queue_reply` points at the address)."""
        names, start = self._name_bytes, i * SOCKADDR_SIZE
        port = names[start + 2] << 8 | names[start + 3]
        if names[start] != socket.AF_INET6:
            return port, False
        return port, names[start + 8 : start + 20] != _V4_MAPPED

    def peer(self, i: int) -> bytes:
        """The i-th sender as a raw sockaddr (family, port, address)."""
        length = self._recv_words[i * _MMSG_WORDS + _NAMELEN] & 0xFFFFFFFF
        start = i * SOCKADDR_SIZE
        return self._name_bytes[start : start + length].tobytes()

    def queue_reply(self, i: int, reply: bytes) -> bool:
        """Queue reply to the sender of the i-th datagram; False when it does not fit a slot."""
        size = len(reply)
        if size > self.size:
            return False
        slot = self._queued
        start = slot * self.size
        self._outgoing[start : start + size] = reply
        self._send_iov_words[slot * 2 + _IOV_LENGTH] = size
        base = slot * _MMSG_WORDS
        # The name length is the socket family's, set once (IPv4 senders on a dual-stack socket
        # are IPv4-mapped IPv6 addresses); control data only on wildcard sockets.
        self._send_words[base + _NAME] = self._names_base + i * SOCKADDR_SIZE
        if self.pktinfo:
            control_length = self._recv_words[i * _MMSG_WORDS + _CONTROLLEN]
            self._send_words[base + _CONTROLLEN] = self._reply_control(i, slot, control_length) if control_length else 0
        self._queued = slot + 1
        return True

    def _reply_control(self, i: int, slot: int, length: int) -> int:
        """Control data that sends slot's reply from the address datagram i arrived at."""
        received = self._recv_control_bytes[i * CONTROL_SIZE : i * CONTROL_SIZE + length].tobytes()
        out = self._send_control_bytes
        start = slot * CONTROL_SIZE
        cmsg_len, level, kind = _CMSG_HEADER.unpack_from(received)
        header = socket.CMSG_LEN(0)
        if level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO and cmsg_len >= header + 20:
            message = received[:cmsg_len]
        elif level == socket.IPPROTO_IP and kind == IP_PKTINFO and cmsg_len >= header + 12:
            # struct in_pktinfo {int ifindex; in_addr spec_dst; in_addr addr}: send from addr.
            data = received[header : header + 12]
            message = received[:header] + struct.pack("=i4s4s", 0, data[8:12], b"\0\0\0\0")
        else:
            return 0
        space = socket.CMSG_SPACE(len(message) - header)
        out[start : start + space] = message.ljust(space, b"\0")
        return space

    def send(self) -> int:
        """Send the queued replies; returns how many could not be sent (a full send buffer)."""
        queued, self._queued = self._queued, 0
        sent_total = 0
        while sent_total < queued:
            address = ctypes.addressof(self._send) + sent_total * ctypes.sizeof(_MMsgHdr)
            sent = _LIBC.sendmmsg(self.fd, address, queued - sent_total, MSG_DONTWAIT)  # type: ignore[union-attr]
            if sent <= 0:
                # A full buffer, or the first reply's peer unreachable: skip that one, go on.
                code = ctypes.get_errno() if sent < 0 else 0
                if code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS):
                    return queued - sent_total
                sent = 1
            sent_total += sent
        return 0


def peer_host(peer: bytes) -> str:
    if peer[0] == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, peer[8:24])
    return socket.inet_ntop(socket.AF_INET, peer[4:8])
