"""Driving a fake from synchronous code: in a background thread, or in another process through /_fake/."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import selectors
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from .server import FakeKube


class FakeKubeThread:
    """A FakeKube running its own event loop in a daemon thread.

    Every FakeKube method becomes a blocking, thread-safe call that runs in that loop (coroutines such as
    `wait_watchers` are awaited there), so plain synchronous tests can drive it while the code under test runs as a
    subprocess or in another thread. Attributes are read in the loop too; lists come back as shallow copies.

        with FakeKubeThread(bookmark_interval=0.2) as kube:
            kube.create(pod(...)); kube.wait_watchers("pods", 1, timeout=5); kube.drop_watches("reset")
    """

    _PLAIN = frozenset({"url", "ca_file", "token_file", "kubeconfig", "env", "state_dir", "host", "port", "tls"})

    def __init__(self, **kwargs: Any) -> None:
        self.kube = FakeKube(**kwargs)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fakekube", daemon=True)

    def start(self) -> FakeKubeThread:
        self.thread.start()
        self.call(self.kube.start)
        return self

    def stop(self) -> None:
        try:
            if self.thread.is_alive():
                self.call(self.kube.close)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    def __enter__(self) -> FakeKubeThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` in the fake's loop (awaiting it if it is a coroutine) and return its result."""
        if threading.current_thread() is self.thread:
            raise RuntimeError("FakeKubeThread proxies must not be called from the fake's own loop; use .kube there")

        async def run() -> Any:
            result = fn(*args, **kwargs)
            return await result if inspect.isawaitable(result) else result

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.kube, name)
        if name in self._PLAIN:
            return attr
        if callable(attr):
            return lambda *args, **kwargs: self.call(attr, *args, **kwargs)
        value = self.call(getattr, self.kube, name)
        return list(value) if isinstance(value, list) else value


class FakeKubeError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status, self.body = status, body


class RemoteFakeKube:
    """The /_fake/ control API of a fake in another process: `remote.create(obj)`, `remote.drop_watches(mode="eof")`."""

    def __init__(self, url: str, token_file: str, ca_file: str | None = None, timeout: float = 60.0) -> None:
        self.url, self.token_file, self.timeout = url, token_file, timeout
        self._ctx = ssl.create_default_context(cafile=ca_file) if url.startswith("https") else None

    def _request(self, method: str, op: str, body: Any = None) -> Any:
        with open(self.token_file) as f:
            token = f.read().strip()
        req = urllib.request.Request(
            f"{self.url}/_fake/{op}",
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, context=self._ctx, timeout=self.timeout) as resp:
                return json.load(resp)["result"]
        except urllib.error.HTTPError as err:
            raise FakeKubeError(err.code, json.loads(err.read() or b"null")) from None

    def call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        return self._request("POST", op, {**kwargs, "args": list(args)} if args else kwargs)

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = self._request("GET", f"requests?since={since}")
        return records

    def __getattr__(self, op: str) -> Callable[..., Any]:
        if op not in FakeKube.CONTROL:
            raise AttributeError(op)
        return lambda *args, **kwargs: self.call(op, *args, **kwargs)


class FakeKubeProcess:
    """`python -m fakekube` as a child process; control operations are forwarded to its /_fake/ API."""

    def __init__(self, *args: str, state_dir: str | None = None, start_timeout: float = 30.0) -> None:
        self.args, self.start_timeout = args, start_timeout
        self.state_dir = state_dir or tempfile.mkdtemp(prefix="fakekube-proc-")
        self.kubeconfig = os.path.join(self.state_dir, "kubeconfig")
        self.ca_file = os.path.join(self.state_dir, "ca.crt")
        self.token_file = os.path.join(self.state_dir, "token")
        self.url = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.remote: RemoteFakeKube | None = None

    def start(self) -> FakeKubeProcess:
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
        cmd = [sys.executable, "-m", "fakekube", "--port", "0", "--state-dir", self.state_dir, *self.args]
        with open(os.path.join(self.state_dir, "fakekube.log"), "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=env)
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(self.start_timeout):
                self.stop()
                raise TimeoutError("fakekube did not start")
        fields = dict(part.split("=", 1) for part in self.proc.stdout.readline().decode().split())
        if "URL" not in fields:
            self.stop()
            raise RuntimeError(f"fakekube failed to start; see {self.state_dir}/fakekube.log")
        self.url, self.kubeconfig = fields["URL"], fields["KUBECONFIG"]
        self.remote = RemoteFakeKube(self.url, self.token_file, self.ca_file if self.url.startswith("https") else None)
        return self

    @property
    def env(self) -> dict[str, str]:
        parsed = urllib.parse.urlsplit(self.url)
        return {"KUBERNETES_SERVICE_HOST": parsed.hostname or "", "KUBERNETES_SERVICE_PORT": str(parsed.port)}

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        return self.proc.returncode

    def __enter__(self) -> FakeKubeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __getattr__(self, op: str) -> Any:
        if self.remote is None or (op not in FakeKube.CONTROL and op != "requests"):
            raise AttributeError(op)
        return getattr(self.remote, op)


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll `predicate` until it returns something truthy; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)
