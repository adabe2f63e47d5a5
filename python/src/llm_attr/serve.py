"""llm_attr.serve: start the llm-attr binary from a notebook, wait for /ready, stop it at exit."""

from __future__ import annotations

import atexit
import collections
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

from ._errors import LLMAttrError
from .client import Client

SERVING = re.compile(r"serving on (http://\S+?);")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def binary(path: Union[str, Path, None] = None) -> str:
    """The llm-attr binary: `path`, else $LLM_ATTR_BIN, else `llm-attr` on the PATH."""
    found = str(path) if path else os.environ.get("LLM_ATTR_BIN") or shutil.which("llm-attr")
    if not found or not Path(found).is_file():
        raise LLMAttrError(
            "cannot find the llm-attr binary: set LLM_ATTR_BIN or put llm-attr on the PATH "
            "(`cargo build --release` builds target/release/llm-attr)"
        )
    return found


class _Log:
    """The server's stderr, read by a thread: the address it serves on and the last lines."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=40)
        self.url: Optional[str] = None
        self.seen = threading.Event()
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = ANSI.sub("", raw.rstrip())
            self.lines.append(line)
            match = SERVING.search(line)
            if match and self.url is None:
                self.url = match.group(1)
                self.seen.set()
        self.seen.set()

    def tail(self) -> str:
        return "\n".join(self.lines)


def _wait_ready(proc: subprocess.Popen[str], log: _Log, timeout: float) -> Client:
    """The client once /ready answers 200; an error with the server's log if it exits first."""
    deadline = time.monotonic() + timeout
    while not log.seen.wait(0.1):
        if time.monotonic() > deadline:
            break
    if log.url is None:
        raise LLMAttrError(f"llm-attr did not start (exit {proc.poll()}):\n{log.tail()}")
    client = Client(log.url)
    while not client.ready():
        if proc.poll() is not None:
            client.close()
            raise LLMAttrError(f"llm-attr exited with {proc.returncode}:\n{log.tail()}")
        if time.monotonic() > deadline:
            client.close()
            raise LLMAttrError(f"llm-attr was not ready after {timeout} s:\n{log.tail()}")
        time.sleep(0.1)
    return client


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within its grace."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Server:
    """A running `llm-attr serve` process and its Client (what `serve` returns).

    Use it as a context manager (`with llm_attr.serve(...) as client:`), or keep it in a
    notebook: `server = llm_attr.serve(...)`, `server.client`, and `server.stop()` (also run
    when Python exits).
    """

    def __init__(self, cmd: Sequence[str], ready_timeout: float) -> None:
        env = dict(os.environ, NO_COLOR="1")
        env.setdefault("RUST_LOG", "info")
        self.cmd = list(cmd)
        self.process = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True, env=env)
        atexit.register(self.stop)
        try:
            self.log = _Log(self.process)
            self.client = _wait_ready(self.process, self.log, ready_timeout)
        except BaseException:
            self.stop()
            raise
        self.url = self.client.url

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 15 s) and close the client."""
        _stop(self.process)
        client = getattr(self, "client", None)
        if client is not None:
            client.close()
        atexit.unregister(self.stop)

    def logs(self) -> str:
        """The server's last log lines."""
        return self.log.tail()

    def __enter__(self) -> Client:
        return self.client

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.process.poll() is None else "stopped"
        return f"Server({self.url!r}, {state})"


def serve(
    model: Union[str, Path, None] = None,
    device: Optional[str] = None,
    port: Optional[int] = None,
    *,
    host: str = "127.0.0.1",
    args: Sequence[str] = (),
    bin: Union[str, Path, None] = None,
    ready_timeout: float = 600.0,
) -> Server:
    """Start `llm-attr serve` and wait until it is ready; a context manager giving a Client.

    `model` is a model spec (`hf:ORG/NAME`, a directory or a `.gguf` file; default the
    server's), `device` `cpu`/`cuda`/`cuda:N`/`auto`, `port` None for any free port, `args`
    more flags (`["--max-concurrent-jobs", "1"]`), `bin` the binary (else $LLM_ATTR_BIN or
    the PATH). The server stops when the `with` block ends (or at `server.stop()`).

        with llm_attr.serve(model="models/SmolLM2-135M-Instruct.Q4_1.gguf") as client:
            print(client.attribute(...).seq_attr)
    """
    cmd = [binary(bin), "serve", "--host", host, "--port", str(port or 0)]
    if model is not None:
        cmd += ["--model", str(model)]
    if device is not None:
        cmd += ["--device", device]
    return Server(cmd + list(args), ready_timeout)
