"""The control socket: one JSON object per line each way, over a root-only Unix socket.

Requests are {"cmd": NAME, ...}; replies are {"ok": true, "result": ...} or {"ok": false, "error": "..."}.
Commands are looked up in an explicit table (`ControlTable`) that whoever starts an instance hands it:
the shell's own commands are `commands.BASE`; the CLI and the Python API serve `tools.debug.SERVED`
(those and the debug tools'), so both serve the same set whatever modules happen to be imported.
A streaming command takes the connection over after its request line: its handler gets the
reader and writer and writes its own JSON lines until it is done or the client goes away.
Whatever a request does wrong, or a handler raises, costs that request an error reply, never the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

MAX_REQUEST = 1 << 20
MAX_ERROR = 200  # characters of an exception's message in an error reply
CLIENTS_CLOSE_TIMEOUT = 1.0  # seconds close() waits for the cancelled client tasks
log = logging.getLogger("vswitch")
T = TypeVar("T")  # what the handlers serve: the running instance
Handler = Callable[[T, dict[str, Any]], Any | Awaitable[Any]]
StreamHandler = Callable[[T, dict[str, Any], asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass(frozen=True)
class ControlTable(Generic[T]):
    """The requests a control server answers: one reply each, or a stream that takes the connection."""

    commands: Mapping[str, Handler[T]]
    streams: Mapping[str, StreamHandler[T]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        both = set(self.commands) & set(self.streams)
        if both:
            raise ValueError(f"control commands named twice: {sorted(both)}")

    def merged(self, other: ControlTable[T]) -> ControlTable[T]:
        """This table with other's entries added; a name in both is a mistake, not an override."""
        clash = (set(self.commands) | set(self.streams)) & (set(other.commands) | set(other.streams))
        if clash:
            raise ValueError(f"control commands named twice: {sorted(clash)}")
        return ControlTable({**self.commands, **other.commands}, {**self.streams, **other.streams})


def _parse(line: bytes) -> dict[str, Any]:
    """The request on one line; ValueError, with a one-line reason, for anything but a JSON object."""
    try:
        request = json.loads(line)
    except RecursionError:  # json recurses per nesting level; its own errors are ValueErrors
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(request, dict):
        raise ValueError("a request is a JSON object")
    return request


def _failed(request: dict[str, Any], exc: Exception) -> dict[str, Any]:
    """The error reply for an exception a handler did not expect: one line, bounded in length. The log
    gets one line too (any client can send the request again); the traceback only at debug level."""
    lines = f"{type(exc).__name__}: {exc}".splitlines() if str(exc) else [type(exc).__name__]
    text = lines[0] if len(lines[0]) <= MAX_ERROR else lines[0][: MAX_ERROR - 3] + "..."
    log.warning("control: request %.40r failed: %s", request.get("cmd"), text)
    log.debug("control: request %.40r failed", request.get("cmd"), exc_info=True)
    return {"ok": False, "error": f"internal error: {text}"}


def _line(reply: dict[str, Any]) -> bytes:
    return json.dumps(reply).encode() + b"\n"


class CommandError(Exception):
    """A request the running instance cannot answer; the message goes back to the client."""


class ControlServer(Generic[T]):
    def __init__(self, instance: T, path: Path, table: ControlTable[T]) -> None:
        self.instance = instance
        self.path = path
        self.table = table
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[Any]] = set()  # one per connection, cancelled by close()

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
        """Stop listening, then end the connections still open (a capture, an idle client): their
        tasks are cancelled and awaited here, not left pending for the loop's close to destroy."""
        if self._server is not None:
            self._server.close()
        clients = set(self._clients)
        for task in clients:
            task.cancel()
        if clients:
            await asyncio.wait(clients, timeout=CLIENTS_CLOSE_TIMEOUT)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            while line := await reader.readline():
                try:
                    request = _parse(line)
                except ValueError as exc:
                    writer.write(_line({"ok": False, "error": f"bad request: {exc}"}))
                    await writer.drain()
                    continue
                streamer = self.table.streams.get(str(request.get("cmd")))
                if streamer is not None:
                    await self._stream(streamer, request, reader, writer)
                    break
                writer.write(await self._dispatch(request))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # the client went away, or sent a line longer than MAX_REQUEST
        except asyncio.CancelledError:
            pass  # close() ended this connection: end quietly (asyncio logs a connection task's errors)
        finally:
            writer.close()
            if task is not None:
                self._clients.discard(task)

    async def _dispatch(self, request: dict[str, Any]) -> bytes:
        """The reply line; encoded here, so a result JSON cannot encode fails this request only."""
        try:
            handler = self.table.commands.get(str(request.get("cmd")))
            if handler is None:
                return _line({"ok": False, "error": f"unknown command {request.get('cmd')!r}"})
            result = handler(self.instance, request)
            if asyncio.iscoroutine(result):
                result = await result
            return _line({"ok": True, "result": result})
        except CommandError as exc:
            return _line({"ok": False, "error": str(exc)})
        except ValueError as exc:
            return _line({"ok": False, "error": f"bad request: {exc}"})
        except Exception as exc:  # a malformed request a handler did not foresee, or a bug in it
            return _line(_failed(request, exc))

    async def _stream(
        self,
        handler: StreamHandler[T],
        request: dict[str, Any],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """Run a streaming handler; if it raises, its last line is the error reply (the client reads it
        as the reply if the stream had not begun, else as a record with "ok": false)."""
        try:
            await handler(self.instance, request, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            raise
        except Exception as exc:
            writer.write(_line(_failed(request, exc)))
            await writer.drain()


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
