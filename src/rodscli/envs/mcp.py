"""MCP servers as environments (docs/architecture.md section 2, family 4; extra `mcp`).

Any Model Context Protocol server started over stdio. Every episode gets its own server
process, its own client session and a fresh temporary working directory, so episodes never
share state. Tools come from the server's `tools/list`; the comparable state comes from
configured read-only calls (e.g. a SELECT on a SQLite server) and files in the working
directory.

The working directory differs per episode, so it never reaches the model or the state: in
every result, error and state text its path reads `{workdir}`, and `{workdir}` in any call's
string arguments is the path again (so a model that repeats a path it was shown reaches the
same file, and replays of one task compare equal). The server's stderr goes to a log beside
the working directory, out of the server's reach (`rods-mcp-*/server-stderr.log`); its last
lines end every error about the server. A task's `command` runs any program: task files are
code. `RODS_ALLOW_COMMANDS` (or the global `--allow-command`) limits which (see
docs/trust-and-limits.md).

The episode interface is synchronous; the async `mcp` 2.x client runs on an event loop in a
background thread per episode (an anyio blocking portal). The server process is spawned here
(not inside the SDK's `stdio_client`) so the episode holds its pid: `close()` always reaps it,
whatever state the session is in. A crashed or hanging server fails the call with an
ENV_ERROR outcome and marks the episode failed; other episodes are not affected.

Task fields used:
  env_config = {
    "command": ["path/to/server", ...] or "path/to/server",   # run with cwd = the working dir
    "args": ["--db-path", "{workdir}/db.sqlite"],              # {workdir} is substituted
    "env": {"NAME": "value"},                                  # extra environment variables
    "setup_calls": [{"name": ..., "arguments": {...}}],        # run at reset, for every task
    "state_calls": [{"name": ..., "arguments": {...}}],        # read-only calls = the snapshot
    "state_files": ["*.txt"],                                  # globs in the working dir
    "timeout_s": 10,                                           # per call; startup gets 3x
  }
  initial_state = {"files": {"rel/path": "text"}, "calls": [{"name": ..., "arguments": ...}]}
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rodscli.envs.base import ENV_ERROR, CallOutcome, Environment, Episode, format_result
from rodscli.errors import InputError

_KILL_GRACE_S = 2.0  # after stdin closes, before SIGKILL to the server's process group
WORKDIR = "{workdir}"
ALLOW_ENV = "RODS_ALLOW_COMMANDS"  # os.pathsep-separated commands (or fnmatch patterns) MCP tasks may run
_LOG_TAIL_LINES = 5


class ServerFailure(Exception):
    """The server crashed, hung or could not start: the episode cannot go on."""


class ToolFailure(Exception):
    """The server ran the tool and reported an error (the model's data, not a failure)."""


@dataclass
class MCPConfig:
    """A task's `env_config` for an MCP server, checked."""

    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    setup_calls: list[dict] = field(default_factory=list)
    state_calls: list[dict] = field(default_factory=list)
    state_files: list[str] = field(default_factory=list)
    timeout_s: float = 10.0

    @classmethod
    def from_task(cls, task: dict) -> MCPConfig:
        cfg = task.get("env_config") or {}
        where = task.get("id")
        command = cfg.get("command")
        if isinstance(command, str):
            command = [command]
        if not command or not all(isinstance(c, str) for c in command):
            raise InputError("MCP task needs env_config.command (the server executable)", where=where,
                             field="env_config.command")
        allowed = allowed_commands()
        if allowed is not None and not command_allowed(command[0], allowed):
            raise InputError(f"command {command[0]!r} is not allowed: {ALLOW_ENV} / --allow-command lists "
                             f"{', '.join(map(repr, allowed)) or 'nothing'}", where=where, field="env_config.command")
        args = cfg.get("args") or []
        if not all(isinstance(a, str) for a in args):
            raise InputError("env_config.args must be strings", where=where, field="env_config.args")
        for key in ("setup_calls", "state_calls"):
            for i, c in enumerate(cfg.get(key) or []):
                if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not isinstance(c.get("arguments", {}), dict):
                    raise InputError("each call needs a 'name' and an 'arguments' object", where=where,
                                     field=f"env_config.{key}[{i}]")
        timeout = cfg.get("timeout_s", 10.0)
        if not isinstance(timeout, int | float) or timeout <= 0:
            raise InputError("timeout_s must be a positive number", where=where, field="env_config.timeout_s")
        return cls(command=list(command) + list(args), env=dict(cfg.get("env") or {}),
                   setup_calls=list(cfg.get("setup_calls") or []), state_calls=list(cfg.get("state_calls") or []),
                   state_files=list(cfg.get("state_files") or []), timeout_s=float(timeout))


def allowed_commands() -> list[str] | None:
    """The commands MCP tasks may run (from RODS_ALLOW_COMMANDS), or None: any command."""
    value = os.environ.get(ALLOW_ENV)
    if value is None:
        return None
    return [entry for entry in value.split(os.pathsep) if entry]


def command_allowed(command: str, allowed: list[str]) -> bool:
    """Whether `command` (as written, or the file it resolves to on PATH) matches an entry of
    `allowed`: a command name, a path, or an fnmatch pattern such as `/opt/mcp/*`."""
    names = {command}
    found = shutil.which(command)
    if found:
        names |= {os.path.abspath(found), os.path.realpath(found)}
    for entry in allowed:
        patterns = {entry}
        resolved = shutil.which(entry) if not any(c in entry for c in "*?[") else None
        if resolved:
            patterns |= {os.path.abspath(resolved), os.path.realpath(resolved)}
        if any(fnmatch.fnmatchcase(name, pattern) for name in names for pattern in patterns):
            return True
    return False


def tool_schema(tool: Any) -> dict:
    """An MCP tool (from `tools/list`) as an OpenAI function schema."""
    params = dict(tool.input_schema or {})
    params["type"] = "object"
    params.setdefault("properties", {})
    return {"type": "function",
            "function": {"name": tool.name, "description": tool.description or "", "parameters": params}}


def result_text(result: Any) -> str:
    """The text of a `CallToolResult`: its text parts joined, other parts as JSON."""
    parts = []
    for item in result.content or []:
        text = getattr(item, "text", None)
        parts.append(text if isinstance(text, str) else item.model_dump_json(by_alias=True, exclude_none=True))
    if not parts and result.structured_content is not None:
        parts.append(format_result(result.structured_content))
    return "\n".join(parts)


@contextlib.asynccontextmanager
async def _stdio_session(argv: list[str], cwd: str, env: dict[str, str], timeout_s: float,
                         on_process: Any, log_path: str, stopped: dict) -> AsyncIterator[Any]:
    """Spawn the server, bridge its stdin/stdout to an initialized `ClientSession`. Its
    stderr goes to `log_path`; `stopped["killed"]` says whether rods had to kill it."""
    import anyio
    from mcp.client.session import ClientSession
    from mcp.shared.message import SessionMessage

    errlog = open(log_path, "ab")  # noqa: SIM115 - closed below
    try:
        process = await anyio.open_process(argv, cwd=cwd, env=env, stderr=errlog, start_new_session=True)
    except OSError as exc:
        errlog.close()
        raise ServerFailure(f"cannot start MCP server {argv[0]!r}: {exc}") from None
    on_process(process)
    read_send, read_recv = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_send, write_recv = anyio.create_memory_object_stream[SessionMessage](0)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_read_messages, process, read_send)
            tg.start_soon(_write_messages, write_recv, process)
            try:
                # the handshake may take 3x (a cold start); every later request is bounded in `_request`
                async with ClientSession(read_recv, write_send, read_timeout_seconds=3 * timeout_s) as session:
                    with anyio.fail_after(3 * timeout_s):
                        await session.initialize()
                    yield session
            finally:
                tg.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await _stop(process, stopped)
    finally:
        errlog.close()


async def _read_messages(process: Any, read_send: Any) -> None:
    """The server's stdout -> the session: newline-delimited JSON-RPC (a line that does not
    parse is passed on as its exception); EOF (the server died) closes the session's read stream."""
    import anyio
    import mcp_types
    from mcp.shared.message import SessionMessage

    async with read_send:
        buffer = b""
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            async for chunk in process.stdout:
                *lines, buffer = (buffer + chunk).split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    try:
                        msg: SessionMessage | Exception = SessionMessage(
                            mcp_types.jsonrpc_message_adapter.validate_json(line, by_name=False))
                    except ValueError as exc:
                        msg = exc
                    await read_send.send(msg)


async def _write_messages(write_recv: Any, process: Any) -> None:
    """The session's messages -> the server's stdin, one JSON line each."""
    import anyio

    async with write_recv:
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            async for message in write_recv:
                data = message.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n"
                await process.stdin.send(data.encode())


async def _stop(process: Any, stopped: dict) -> None:
    """Close the server's stdin, give it a grace period to exit, then kill its process group."""
    with contextlib.suppress(Exception):
        await process.stdin.aclose()
    await _wait_exit(process, _KILL_GRACE_S)
    if process.returncode is None:
        stopped["killed"] = True
    _kill_group(process.pid)
    await _wait_exit(process, _KILL_GRACE_S)


async def _wait_exit(process: Any, timeout_s: float) -> None:
    # polls returncode: asyncio's process.wait() also waits for the pipes to close
    import anyio

    with anyio.move_on_after(timeout_s):
        while process.returncode is None:
            await anyio.sleep(0.01)


def _kill_group(pid: int) -> None:
    """SIGKILL the server's process group (it runs in its own session), if still there."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class MCPEpisode(Episode):
    """One server process, one session and one working directory."""

    def __init__(self, config: MCPConfig, initial_state: dict | None = None):
        from anyio.from_thread import start_blocking_portal

        self.config = config
        # <tempdir>/rods-mcp-<random>/work is the server's folder; its log lies beside it, out of its reach
        self.root = tempfile.mkdtemp(prefix="rods-mcp-")
        self.workdir = os.path.join(self.root, "work")
        os.mkdir(self.workdir)
        self.log_path = os.path.join(self.root, "server-stderr.log")
        self._paths = sorted({self.workdir, os.path.realpath(self.workdir)}, key=len, reverse=True)
        self._stopped: dict = {}
        self.failure: str | None = None
        self.pid: int | None = None
        self._process: Any = None
        self._session: Any = None
        self._tools: list[dict] = []
        self._stack = contextlib.ExitStack()
        self._lock = threading.Lock()
        try:
            initial_state = initial_state or {}
            for rel, text in (initial_state.get("files") or {}).items():
                path = Path(self.workdir, rel).resolve()
                if not path.is_relative_to(Path(self.workdir).resolve()):
                    raise InputError(f"initial file {rel!r} lies outside the working directory",
                                     field="initial_state.files")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            self._portal = self._stack.enter_context(start_blocking_portal())
            argv = [a.replace(WORKDIR, self.workdir) for a in config.command]
            env = {**_inherited_env(), **{k: v.replace(WORKDIR, self.workdir) for k, v in config.env.items()}}
            try:
                self._session = self._stack.enter_context(self._portal.wrap_async_context_manager(
                    _stdio_session(argv, self.workdir, env, config.timeout_s, self._on_process, self.log_path,
                                   self._stopped)))
            except Exception as exc:
                cause = _innermost(exc)  # anyio wraps a task's failure in an exception group
                if isinstance(cause, ServerFailure) and self.pid is None:  # the command could not be run at all
                    raise InputError(str(cause), field="env_config.command") from None
                if isinstance(cause, TimeoutError):
                    raise ServerFailure(f"MCP server did not finish its handshake within {3 * config.timeout_s:g}s"
                                        f"{self._log_note()}") from None
                said = f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
                raise ServerFailure(f"MCP server failed during its handshake: {said}{self._exit_note()}"
                                    f"{self._log_note()}") from None
            self._tools = [tool_schema(t) for t in self._request(self._session.list_tools).tools]
            for c in config.setup_calls + list(initial_state.get("calls") or []):
                try:
                    self._call_tool(c["name"], c.get("arguments") or {})
                except ToolFailure as exc:
                    raise InputError(f"setup call {c['name']!r} failed: {exc}", field="env_config.setup_calls") from None
        except ServerFailure as exc:
            # the server broke while starting: a failed episode (the rollout records env_error), not a crash
            self._fail(str(exc))
        except BaseException:
            self.close()
            raise

    def _on_process(self, process: Any) -> None:
        self._process = process
        self.pid = process.pid

    def _request(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one request on the episode's loop; a dead or hung server raises ServerFailure."""
        import anyio
        from mcp.shared.exceptions import MCPError
        from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT

        async def bounded() -> Any:
            with anyio.fail_after(self.config.timeout_s + 1.0):  # beyond the session's own timeout
                return await fn(*args, **kwargs)

        try:
            return self._portal.call(bounded)
        except TimeoutError:
            raise ServerFailure(f"MCP server did not answer within {self.config.timeout_s:g}s (hung)"
                                f"{self._log_note()}") from None
        except MCPError as exc:
            if exc.code == REQUEST_TIMEOUT:
                raise ServerFailure(f"MCP server did not answer within {self.config.timeout_s:g}s (hung)"
                                    f"{self._log_note()}") from None
            if exc.code == CONNECTION_CLOSED:
                raise ServerFailure(f"MCP server closed the connection{self._exit_note()}{self._log_note()}") from None
            raise ToolFailure(f"MCP error {exc.code}: {exc.message}") from None
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream):
            raise ServerFailure(f"MCP server connection broke{self._exit_note()}{self._log_note()}") from None

    def _exit_note(self) -> str:
        code = getattr(self._process, "returncode", None)
        if code is None or self._stopped.get("killed"):  # still running, or rods's own kill
            return ""
        return f" (server exited with {'signal ' + str(-code) if code < 0 else 'code ' + str(code)})"

    def _log_note(self) -> str:
        """'; server log: <its last lines>' (the server's own words on what went wrong), or ''."""
        tail = self.normalized(server_log_tail(self.log_path))
        return f"; server log: {tail}" if tail else ""

    def normalized(self, text: str) -> str:
        """`text` with the episode's working directory written as {workdir}."""
        for path in self._paths:
            text = text.replace(path, WORKDIR)
        return text

    def with_workdir(self, value: Any) -> Any:
        """Call arguments with {workdir} in their strings written as the working directory."""
        if isinstance(value, str):
            return value.replace(WORKDIR, self.workdir) if WORKDIR in value else value
        if isinstance(value, dict):
            return {k: self.with_workdir(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.with_workdir(v) for v in value]
        return value

    def _call_tool(self, name: str, arguments: dict) -> str:
        result = self._request(self._session.call_tool, name, self.with_workdir(arguments),
                               read_timeout_seconds=self.config.timeout_s)
        text = self.normalized(result_text(result))
        if result.is_error:
            raise ToolFailure(text or f"tool {name!r} failed")
        return text

    # ---- Episode protocol

    def tools(self) -> list[dict]:
        return self._tools

    def invoke(self, name: str, arguments: dict) -> Any:
        if self.failed:
            raise ServerFailure(self.failure or "MCP server failed")
        try:
            return self._call_tool(name, arguments)
        except ServerFailure as exc:
            self._fail(str(exc))
            raise

    def call(self, name: Any, arguments: Any, offered: set[str] | None = None) -> CallOutcome:
        outcome = super().call(name, arguments, offered)
        if self.failed and outcome.error is not None:
            return CallOutcome(f"Error: {self.failure}", ENV_ERROR)
        return outcome

    def snapshot(self) -> dict:
        """Results of the configured read-only calls and the configured files' contents."""
        calls = []
        for c in self.config.state_calls:
            if self.failed:
                calls.append({"name": c["name"], "error": self.failure})
                continue
            try:
                calls.append({"name": c["name"], "result": self._call_tool(c["name"], c.get("arguments") or {})})
            except ToolFailure as exc:
                calls.append({"name": c["name"], "error": str(exc)})
            except ServerFailure as exc:
                self._fail(str(exc))
                calls.append({"name": c["name"], "error": self.failure})
        files = {}
        root = Path(self.workdir)
        for pattern in self.config.state_files:
            for path in sorted(root.glob(pattern)):
                if path.is_file():
                    data = path.read_bytes()
                    try:
                        files[path.relative_to(root).as_posix()] = self.normalized(data.decode())
                    except UnicodeDecodeError:
                        files[path.relative_to(root).as_posix()] = {"bytes": len(data), "hex": data.hex()}
        return {"calls": calls, "files": files}

    def _fail(self, message: str) -> None:
        if not self.failed:
            self.failed = True
            self.failure = self.normalized(message)
            # a hung server may never answer again: stop it now, not at close()
            if self.pid is not None:
                _kill_group(self.pid)

    def close(self) -> None:
        """Stop the session and the server (always reaped), remove the working directory."""
        with self._lock:
            try:
                self._stack.close()
            except Exception:  # noqa: S110 - a broken session still has to be torn down below
                pass
            finally:
                if self.pid is not None:
                    _kill_group(self.pid)
                    with contextlib.suppress(ChildProcessError, OSError):
                        os.waitpid(self.pid, os.WNOHANG)
                shutil.rmtree(self.root, ignore_errors=True)


def server_log_tail(path: str, lines: int = _LOG_TAIL_LINES, limit: int = 600) -> str:
    """The last non-empty lines of a server's stderr log, joined with ' | ' (at most `limit` characters)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8 * limit))
            data = fh.read().decode(errors="replace")
    except OSError:
        return ""
    tail = " | ".join(line.strip() for line in data.splitlines() if line.strip())
    tail = " | ".join(tail.split(" | ")[-lines:])
    return tail if len(tail) <= limit else "..." + tail[-limit:]


def _innermost(exc: BaseException) -> BaseException:
    """The first innermost error of (nested) exception groups; `exc` itself otherwise."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _inherited_env() -> dict[str, str]:
    # the SDK's choice: only variables that are safe to pass to a server
    keys = ("HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LANG", "LC_ALL", "TMPDIR")
    return {k: os.environ[k] for k in keys if k in os.environ}


class MCPEnvironment(Environment):
    """Any MCP server over stdio; one process, session and working directory per episode."""

    family = "mcp"

    def reset(self, task: dict) -> Episode:
        try:
            import mcp  # noqa: F401
        except ImportError:
            raise InputError("MCP tasks need the `mcp` extra: pip install 'rodscli[mcp]'") from None
        return MCPEpisode(MCPConfig.from_task(task), task.get("initial_state") or {})
