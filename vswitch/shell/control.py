"""The control socket: one JSON object per line each way, over a root-only Unix socket.

Requests are {"cmd": NAME, ...}; replies are {"ok": true, "result": ...} or {"ok": false, "error": "..."}.
Commands are looked up in an explicit table (`ControlTable`) that whoever starts an instance hands it:
the shell's own commands are `commands.BASE`; the CLI and the Python API serve `tools.debug.SERVED`
(those and the debug tools'), so both serve the same set whatever modules happen to be imported.
A streaming command takes the connection over after its request line: its handler gets the
reader and writer and writes its own JSON lines until it is done or the client goes away.
Whatever a request does wrong, or a handler raises, costs that request an error reply, never the server.

What a client does wrong costs that client only: one that stops reading (a capture it never reads)
has at most CLIENT_BUFFER bytes waiting for it here; a write that cannot get under that within
DRAIN_LIMIT seconds disconnects it (event control-client-stalled). And the socket's file is looked at
every SOCKET_CHECK_INTERVAL: removed (or replaced), the server listens on a new one at the same path
(event control-socket-restored), the connections already open going on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from ..core.counters import Event
from .state import pid_alive

MAX_REQUEST = 1 << 20
MAX_ERROR = 200  # characters of an exception's message in an error reply
CLIENTS_CLOSE_TIMEOUT = 1.0  # seconds close() waits for the cancelled client tasks
CLIENT_BUFFER = 64 << 10  # bytes written to a client and not yet taken by its socket, before drain waits
DRAIN_LIMIT = 5.0  # seconds a client may leave its replies unread before it is disconnected
SOCKET_CHECK_INTERVAL = 2.0  # seconds between looks at the socket's file
log = logging.getLogger("vswitch")
T = TypeVar("T")  # what the handlers serve: the running instance


class LineWriter(Protocol):
    """What a handler writes its client's lines with (ClientWriter; an asyncio.StreamWriter fits)."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


Handler = Callable[[T, dict[str, Any]], Any | Awaitable[Any]]
StreamHandler = Callable[[T, dict[str, Any], asyncio.StreamReader, LineWriter], Awaitable[None]]


class ClientStalled(ConnectionError):
    """A client left its replies unread for DRAIN_LIMIT seconds: it is disconnected."""


class ClientWriter:
    """A client's StreamWriter whose drain waits at most DRAIN_LIMIT seconds, then raises ClientStalled.

    Its transport pauses writers over CLIENT_BUFFER bytes: a handler that drains after each write
    keeps at most that much (plus one line) waiting in memory for a client that does not read."""

    def __init__(self, writer: asyncio.StreamWriter, limit: float | None = None) -> None:
        self.writer = writer
        self.limit = DRAIN_LIMIT if limit is None else limit
        writer.transport.set_write_buffer_limits(high=CLIENT_BUFFER)

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def drain(self) -> None:
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation (close()'s)
            # that lands as the drain completes, and the handler would go on after close.
            async with asyncio.timeout(self.limit):
                await self.writer.drain()
        except TimeoutError:
            raise ClientStalled(f"{self.buffered()} bytes unread for {self.limit:g}s") from None

    def buffered(self) -> int:
        return self.writer.transport.get_write_buffer_size()


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
    def __init__(
        self, instance: T, path: Path, table: ControlTable[T], events: Counter[str] | None = None
    ) -> None:
        """events: where the server counts what befell it (the datapath's, so `stats` shows them)."""
        self.instance = instance
        self.path = path
        self.table = table
        self.events: Counter[str] = Counter() if events is None else events
        self._server: asyncio.AbstractServer | None = None
        self._old_servers: list[asyncio.AbstractServer] = []  # listening on a file since removed
        self._clients: set[asyncio.Task[Any]] = set()  # one per connection, cancelled by close()
        self._inode: int | None = None  # the socket file's, as made: a different one is not ours
        self._watch: asyncio.TimerHandle | None = None
        self._restoring: asyncio.Task[None] | None = None
        self._restore_failed = False  # the last attempt to listen again failed (logged once)

    async def start(self) -> None:
        await self._listen()
        self._watch = asyncio.get_running_loop().call_later(SOCKET_CHECK_INTERVAL, self._check_socket)

    async def _listen(self) -> None:
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
        self._inode = os.stat(self.path).st_ino

    def _socket_there(self) -> bool:
        """Whether the file at path is still the socket we listen on."""
        try:
            return os.stat(self.path).st_ino == self._inode
        except OSError:
            return False

    def _check_socket(self) -> None:
        """Every SOCKET_CHECK_INTERVAL: the socket's file gone or replaced, listen on a new one."""
        self._watch = asyncio.get_running_loop().call_later(SOCKET_CHECK_INTERVAL, self._check_socket)
        if self._restoring is None and not self._socket_there():
            self._restoring = asyncio.ensure_future(self._restore())

    async def _restore(self) -> None:
        """Listen again at path; the connections open meanwhile go on (closing a server only stops
        it listening)."""
        try:
            if self._server is not None:
                self._server.close()
                self._old_servers.append(self._server)
                self._server = None
            try:
                await self._listen()
            except OSError as exc:
                if not self._restore_failed:
                    log.warning(
                        "control: the socket %s was removed and cannot be made again (%s); trying every %gs",
                        self.path,
                        exc.strerror or exc,
                        SOCKET_CHECK_INTERVAL,
                    )
                self._restore_failed = True
                return
            self._restore_failed = False
            self.events[Event.CONTROL_SOCKET_RESTORED] += 1
            log.warning("control: the socket %s was removed; listening on it again", self.path)
        finally:
            self._restoring = None

    async def close(self) -> None:
        """Stop listening, then end the connections still open (a capture, an idle client): their
        tasks are cancelled and awaited here, not left pending for the loop's close to destroy."""
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._restoring is not None:
            self._restoring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._restoring
        servers = [*self._old_servers, *([self._server] if self._server is not None else [])]
        for server in servers:
            server.close()
        clients = set(self._clients)
        for task in clients:
            task.cancel()
        if clients:
            await asyncio.wait(clients, timeout=CLIENTS_CLOSE_TIMEOUT)
        for server in servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        if self._socket_there():  # not a file someone else put there since
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:  # a read-only state folder: the ledger keeps naming it for `down`
                log.warning("control: cannot remove %s: %s", self.path, exc.strerror or exc)

    async def _client(self, reader: asyncio.StreamReader, stream_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        writer = ClientWriter(stream_writer)
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
        except ClientStalled as exc:
            self.events[Event.CONTROL_CLIENT_STALLED] += 1
            log.warning("control: a client stopped reading (%s); disconnected it", exc)
            stream_writer.transport.abort()  # what it left unread goes, not flushed on close
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # the client went away, or sent a line longer than MAX_REQUEST
        except asyncio.CancelledError:
            pass  # close() ended this connection: end quietly (asyncio logs a connection task's errors)
        finally:
            stream_writer.close()
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
        writer: ClientWriter,
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


def no_socket(path: Path) -> ControlError:
    """The error for a control socket that is not there: a distinct one when the instance's state
    file (NAME.json beside NAME.sock) names a process that still runs (its socket's file was removed;
    it makes a new one within SOCKET_CHECK_INTERVAL, unless its folder cannot be written)."""
    try:
        state = json.loads(path.with_suffix(".json").read_text())
        pid, started = int(state["pid"]), state.get("started")
        running = pid_alive(pid, None if started is None else int(started))
    except (OSError, ValueError, TypeError, KeyError):
        running = False
    if running:
        return ControlError(
            f"the control socket {path} is missing, but the instance is running (pid {pid}): it makes "
            f"a new one within {SOCKET_CHECK_INTERVAL:g}s; if it does not, see its log"
        )
    return ControlError(f"no running instance at {path}")


def request(path: Path, cmd: str, timeout: float = 5.0, **fields: Any) -> Any:
    """Send one request to a running instance and return its result (blocking client)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            raise no_socket(path) from None
        except ConnectionRefusedError:
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
