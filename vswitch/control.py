"""The control socket: one JSON object per line each way, over a root-only Unix socket.

Requests are {"cmd": NAME, ...}; replies are {"ok": true, "result": ...} or {"ok": false, "error": "..."}.
Commands are looked up in a table, so another module adds one by registering a handler.
A streaming command (`@stream`) takes the connection over after its request line: its handler gets the
reader and writer and writes its own JSON lines until it is done or the client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .instance import Instance

MAX_REQUEST = 1 << 20
Handler = Callable[["Instance", dict[str, Any]], Any | Awaitable[Any]]
COMMANDS: dict[str, Handler] = {}
StreamHandler = Callable[
    ["Instance", dict[str, Any], asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]
]
STREAMS: dict[str, StreamHandler] = {}


def command(name: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        COMMANDS[name] = handler
        return handler

    return register


def stream(name: str) -> Callable[[StreamHandler], StreamHandler]:
    def register(handler: StreamHandler) -> StreamHandler:
        STREAMS[name] = handler
        return handler

    return register


def _streamer(line: bytes) -> tuple[StreamHandler, dict[str, Any]] | None:
    """The streaming handler a request line asks for, if it asks for one (else the table answers)."""
    try:
        request = json.loads(line)
    except ValueError:
        return None
    handler = STREAMS.get(str(request.get("cmd"))) if isinstance(request, dict) else None
    return None if handler is None else (handler, request)


@command("status")
def _status(instance: Instance, _req: dict[str, Any]) -> Any:
    return instance.status()


@command("fdb")
def _fdb(instance: Instance, _req: dict[str, Any]) -> Any:
    return instance.fdb(asyncio.get_running_loop().time())


@command("stats")
def _stats(instance: Instance, _req: dict[str, Any]) -> Any:
    snapshot = instance.datapath.counters.snapshot()
    if instance.router is not None:
        snapshot["router"] = {
            "drops": dict(sorted(instance.router.drops.items())),
            "events": dict(sorted(instance.router.events.items())),
        }
    return snapshot


class CommandError(Exception):
    """A request the running instance cannot answer; the message goes back to the client."""


def _router(instance: Instance) -> Any:
    if instance.router is None:
        raise CommandError("this instance has no router: start it with --segment or --uplink")
    return instance.router


@command("routes")
def _routes(instance: Instance, _req: dict[str, Any]) -> Any:
    return _router(instance).routes_table()


@command("arp")
def _arp(instance: Instance, _req: dict[str, Any]) -> Any:
    return _router(instance).arp_table(asyncio.get_running_loop().time())


@command("conntrack")
def _conntrack(instance: Instance, _req: dict[str, Any]) -> Any:
    return _router(instance).conntrack_table(asyncio.get_running_loop().time())


class ControlServer:
    def __init__(self, instance: Instance, path: Path) -> None:
        self.instance = instance
        self.path = path
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # our own ledger names this path; a stale one is from a dead us
        old_umask = os.umask(0o177)  # the socket is born 0600: no window where others can connect
        try:
            self._server = await asyncio.start_unix_server(
                self._client, path=str(self.path), limit=MAX_REQUEST
            )
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                streamer = _streamer(line)
                if streamer is not None:
                    await streamer[0](self.instance, streamer[1], reader, writer)
                    break
                reply = await self._dispatch(line)
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    async def _dispatch(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
            handler = COMMANDS.get(str(request.get("cmd")))
            if handler is None:
                return {"ok": False, "error": f"unknown command {request.get('cmd')!r}"}
            result = handler(self.instance, request)
            if asyncio.iscoroutine(result):
                result = await result
            return {"ok": True, "result": result}
        except CommandError as exc:
            return {"ok": False, "error": str(exc)}
        except ValueError as exc:
            return {"ok": False, "error": f"bad request: {exc}"}


class ControlError(Exception):
    """The instance is not there, or it answered with an error."""


def request(path: Path, cmd: str, timeout: float = 5.0, **fields: Any) -> Any:
    """Send one request to a running instance and return its result (blocking client)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(f"no running instance at {path}") from None
        except PermissionError:
            raise ControlError(f"cannot connect to {path}: run as root") from None
        sock.sendall(json.dumps({"cmd": cmd, **fields}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        raise ControlError(f"instance at {path} did not answer within {timeout:.0f}s") from None
    finally:
        sock.close()
    if not data:
        raise ControlError(f"instance at {path} closed the connection")
    reply = json.loads(data)
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error")))
    return reply["result"]
