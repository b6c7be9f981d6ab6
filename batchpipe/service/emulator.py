"""A loopback HTTP emulator of OpenAI's Batch + Files APIs and Anthropic's Message Batches API.

The emulator is only an HTTP front end: files, batches, their lifecycle, request faults and answers all come
from the one `engine.BatchEngine` (state under `state_dir`). Point the official SDKs at it:
`OpenAI(base_url=emu.openai_base_url)` (ends in /v1) and `Anthropic(base_url=emu.anthropic_base_url)`.

Fault spec (a dict, or a JSON/YAML file for `batchpipe emulator --faults`):

    requests:                 # engine: per-request faults (see engine.check_faults)
      - {match: "req-3", kind: error, status: 500, times: 1}    # kind: error | invalid_json | schema_violation
    batch:                    # engine: batch faults
      {fail: token_limit_exceeded, times: 1, expire_after_requests: 2, finalizing: 5}
    http:                     # HTTP level: the first matching rule that still applies answers the call
      - {method: POST, path: /v1/batches, status: 429, retry_after: 0.05, times: 3}
      - {method: GET, path: "/v1/batches/*", status: 500, times: 2, skip: 1}
      - {method: POST, path: /v1/messages/batches, drop: after, times: 1}   # drop: before | after
    not_found_after_create:   # the first `gets` GETs of each new batch answer 404 (api: any|openai|anthropic)
      {gets: 2, api: anthropic}

`path` is a glob (fnmatch) on the URL path without the query; `method` defaults to any (`*`). `drop` closes
the socket without answering, before the call is handled or after it (the batch then exists).

Control endpoints (no auth): `GET /_emulator/requests` ({"data": [call log]}), `GET|POST /_emulator/faults`
(read / replace the fault spec), `POST /_emulator/timing` ({validating, in_progress, finalizing,
completion_window} seconds, replacing the whole timing, for new batches), `POST /_emulator/reset` (startup
faults back, log and fault counts cleared; stored files and batches stay), `GET /_emulator/health`.
"""

from __future__ import annotations

import contextlib
import email.message
import email.parser
import email.policy
import fnmatch
import ipaddress
import json
import re
import socket
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from ..errors import Conflict, InvalidRequest, NotFound, RateLimited
from .engine import BatchEngine, Timing, anthropic_error_type, check_faults, new_id
from .responders import NeutralError, status_error_type

if TYPE_CHECKING:
    from collections.abc import Callable

    from .responders import Responder

FAULT_SECTIONS = ("requests", "batch", "http", "not_found_after_create")
UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data")
MAX_BODY_BYTES = 600 * 1024 * 1024
MAX_ANTHROPIC_BODY_BYTES = 256 * 1024 * 1024

T = TypeVar("T")


# --- Fault spec ---------------------------------------------------------------------------------


@dataclass
class HttpFault:
    """One HTTP-level rule: answer `status` or `drop` the connection ("before" or "after" handling the call),
    on calls matching `method` and the `path` glob; after `skip` matching calls, at most `times` times
    (None: always). `retry_after` seconds are sent as retry-after(-ms) headers (a 429 always has them: 1 s)."""

    path: str
    method: str = "*"
    status: int | None = None
    retry_after: float | None = None
    drop: str | None = None
    times: int | None = None
    skip: int = 0
    message: str | None = None
    seen: int = field(default=0, repr=False)
    applied: int = field(default=0, repr=False)

    def matches(self, method: str, path: str) -> bool:
        return self.method in ("*", method) and fnmatch.fnmatchcase(path, self.path)


@dataclass
class FaultPlan:
    """A checked fault spec: the engine's part and the HTTP-level part."""

    engine: dict[str, Any]
    http: list[HttpFault]
    not_found_gets: int = 0
    not_found_api: str = "any"


def parse_faults(spec: dict[str, Any] | None) -> FaultPlan:
    """Check a fault spec (see the module docstring); ValueError on anything unknown."""
    spec = spec or {}
    if not isinstance(spec, dict):
        raise ValueError("a fault spec is a mapping with sections " + ", ".join(FAULT_SECTIONS))
    unknown = set(spec) - set(FAULT_SECTIONS)
    if unknown:
        raise ValueError(f"unknown fault sections: {sorted(unknown)}")
    engine_part = {key: spec[key] for key in ("requests", "batch") if spec.get(key) is not None}
    http = [http_fault(rule) for rule in spec.get("http") or []]
    not_found = spec.get("not_found_after_create") or {}
    if not isinstance(not_found, dict) or set(not_found) - {"gets", "api"}:
        raise ValueError("not_found_after_create takes {gets: N, api: any|openai|anthropic}")
    gets, api = not_found.get("gets", 0), not_found.get("api", "any")
    if not isinstance(gets, int) or gets < 0 or api not in ("any", "openai", "anthropic"):
        raise ValueError("not_found_after_create: gets is a count >= 0, api is any, openai or anthropic")
    return FaultPlan(engine=check_faults(engine_part), http=http, not_found_gets=gets, not_found_api=api)


def http_fault(rule: Any) -> HttpFault:
    known = {f.name for f in fields(HttpFault)} - {"seen", "applied"}
    if not isinstance(rule, dict) or not isinstance(rule.get("path"), str) or set(rule) - known:
        raise ValueError(f"an http fault needs `path` and takes only {sorted(known)}: {rule}")
    fault = HttpFault(**rule)
    fault.method = fault.method.upper()
    if (fault.status is None) == (fault.drop is None):
        raise ValueError(f"an http fault has either `status` or `drop`: {rule}")
    if fault.status is not None and not (isinstance(fault.status, int) and 400 <= fault.status <= 599):
        raise ValueError(f"http fault status must be an HTTP error status (400..599): {rule}")
    if fault.drop not in (None, "before", "after"):
        raise ValueError(f"http fault drop is `before` or `after`: {rule}")
    if fault.times is not None and (not isinstance(fault.times, int) or fault.times < 0):
        raise ValueError(f"http fault times must be a count: {rule}")
    if fault.retry_after is not None and (not isinstance(fault.retry_after, (int, float)) or fault.retry_after < 0):
        raise ValueError(f"http fault retry_after must be seconds >= 0: {rule}")
    return fault


def load_faults(path: str | Path) -> dict[str, Any]:
    """A fault spec from a JSON or YAML file."""
    import yaml  # JSON is YAML

    spec = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    parse_faults(spec)
    return spec


def parse_delays(text: str) -> Timing:
    """`validating=1,in_progress=2,finalizing=1` (also completion_window) -> Timing."""
    values: dict[str, float] = {}
    known = {f.name for f in fields(Timing)}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in known:
            raise ValueError(f"--delays {part!r}: expected NAME=SECONDS with NAME in {sorted(known)}")
        values[key] = float(value)
    return Timing(**values)


def to_timing(timing: Timing | dict[str, Any] | None) -> Timing:
    if timing is None or isinstance(timing, Timing):
        return timing or Timing()
    return Timing(**{key: float(value) for key, value in dict(timing).items()})


def check_loopback(host: str) -> str:
    """The address to bind for `host`; ValueError unless it is a loopback address (or `localhost`)."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"refusing to serve on {host!r}: the emulator binds to a loopback address only (127.0.0.1, ::1)"
        )
    return host


# --- HTTP plumbing ------------------------------------------------------------------------------


class ParamError(InvalidRequest):
    """A bad request parameter (HTTP 400), naming the parameter."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass
class Call:
    """One HTTP request as received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> dict[str, Any]:
        try:
            value = json.loads(self.body or b"null")
        except ValueError:
            raise ParamError("The request body is not valid JSON.") from None
        if not isinstance(value, dict):
            raise ParamError("The request body must be a JSON object.")
        return value

    def int_param(self, name: str, default: int, low: int, high: int) -> int:
        text = self.query.get(name)
        if text is None:
            return default
        try:
            value = int(text)
        except ValueError:
            raise ParamError(f"Invalid value for '{name}': expected an integer.", name) from None
        if not low <= value <= high:
            raise ParamError(f"Invalid value for '{name}': must be between {low} and {high}.", name)
        return value


@dataclass
class Reply:
    """An HTTP response; `ref` is the id a create made (for the call log)."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    ref: str | None = None


def json_reply(value: Any, status: int = 200, ref: str | None = None) -> Reply:
    return Reply(status, json.dumps(value).encode("utf-8"), ref=ref)


def error_reply(api: str, status: int, message: str, param: str | None = None) -> Reply:
    """The provider's error body for `status`."""
    if api == "anthropic":
        kind = anthropic_error_type(NeutralError(status=status, type="", message=message))
        body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": new_id("req_")}
    else:
        code = "rate_limit_exceeded" if status == 429 else "invalid_api_key" if status == 401 else None
        kind = status_error_type(status) if status == 429 or status >= 500 else "invalid_request_error"  # as OpenAI
        body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return json_reply(body, status)


def parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """The fields of a multipart/form-data body: name -> (filename or None, raw content)."""
    header = email.message.EmailMessage()
    header["content-type"] = content_type
    boundary = header.get_param("boundary") if header.get_content_type() == "multipart/form-data" else None
    if not isinstance(boundary, str) or not boundary:
        raise ParamError("Expected a multipart/form-data body with a boundary.")
    sections = (b"\r\n" + body).split(b"\r\n--" + boundary.encode("latin-1"))
    if len(sections) < 3 or not sections[-1].startswith(b"--"):
        raise ParamError("The multipart/form-data body is malformed.")
    form: dict[str, tuple[str | None, bytes]] = {}
    parser = email.parser.BytesHeaderParser(policy=email.policy.HTTP)
    for section in sections[1:-1]:
        head, sep, content = section.partition(b"\r\n\r\n")
        if not sep:
            raise ParamError("The multipart/form-data body is malformed.")
        part = parser.parsebytes(head.partition(b"\r\n")[2] + b"\r\n\r\n")
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            form[name] = (part.get_filename(), content)
    return form


def expiry_seconds(value: Any, name: str) -> int | None:
    """`{anchor: created_at, seconds: N}` -> N (the engine checks the range)."""
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("anchor") != "created_at" or set(value) != {"anchor", "seconds"}:
        raise ParamError(f"{name} must be {{anchor: 'created_at', seconds: N}}.", name)
    return value["seconds"]


def page_of(
    items: list[T], ids: list[str], limit: int, after: str | None = None, before: str | None = None
) -> tuple[list[T], bool]:
    """A cursor page of `items` (already in list order): the `limit` items after `after`, or just before
    `before`, or the first ones; and whether more items lie beyond the page in that direction."""
    if after is not None and before is not None:
        raise ParamError("Use either after_id or before_id, not both.", "before_id")
    cursor = after if after is not None else before
    if cursor is not None and cursor not in ids:
        raise ParamError(
            f"Invalid cursor {cursor!r}: no such object in this list.", "after" if after is not None else "before"
        )
    if before is not None:
        rest = items[: ids.index(before)]
        return rest[-limit:], len(rest) > limit
    rest = items[ids.index(after) + 1 :] if after is not None else items
    return rest[:limit], len(rest) > limit


def list_body(views: list[dict[str, Any]], has_more: bool, openai: bool) -> dict[str, Any]:
    body = {
        "data": views,
        "has_more": has_more,
        "first_id": views[0]["id"] if views else None,
        "last_id": views[-1]["id"] if views else None,
    }
    return {"object": "list", **body} if openai else body


# --- The emulator -------------------------------------------------------------------------------


Route = tuple[str, re.Pattern[str], str, str | None]  # method, path pattern, handler name, id kind in path


def _routes() -> list[Route]:
    table = [
        ("POST", r"/v1/files", "create_file", "file"),
        ("GET", r"/v1/files", "list_files", None),
        ("GET", r"/v1/files/([^/]+)", "get_file", "file"),
        ("DELETE", r"/v1/files/([^/]+)", "delete_file", "file"),
        ("GET", r"/v1/files/([^/]+)/content", "file_content", "file"),
        ("POST", r"/v1/batches", "create_batch", "batch"),
        ("GET", r"/v1/batches", "list_batches", None),
        ("GET", r"/v1/batches/([^/]+)", "get_batch", "batch"),
        ("POST", r"/v1/batches/([^/]+)/cancel", "cancel_batch", "batch"),
        ("POST", r"/v1/chat/completions", "chat_completion", None),
        ("POST", r"/v1/messages/batches", "create_message_batch", "batch"),
        ("GET", r"/v1/messages/batches", "list_message_batches", None),
        ("GET", r"/v1/messages/batches/([^/]+)", "get_message_batch", "batch"),
        ("POST", r"/v1/messages/batches/([^/]+)/cancel", "cancel_message_batch", "batch"),
        ("DELETE", r"/v1/messages/batches/([^/]+)", "delete_message_batch", "batch"),
        ("GET", r"/v1/messages/batches/([^/]+)/results", "message_batch_results", "batch"),
        ("POST", r"/v1/messages", "message", None),
    ]
    return [(method, re.compile(pattern + r"/?"), name, kind) for method, pattern, name, kind in table]


ROUTES = _routes()


class Emulator:
    """Both batch APIs over one BatchEngine, served on 127.0.0.1 from a background thread.

    `with Emulator(state_dir, faults={...}, timing=Timing(...)) as emu:` starts it on a free port (or `port`);
    leaving the block stops it (open connections are closed)."""

    def __init__(
        self,
        state_dir: str | Path,
        faults: dict[str, Any] | None = None,
        timing: Timing | dict[str, Any] | None = None,
        responder: Responder | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        self.host = check_loopback(host)
        self.port = port
        self.engine = BatchEngine(Path(state_dir), responder, to_timing(timing))
        self._lock = threading.Lock()
        self._log: list[dict[str, Any]] = []
        self._hidden: dict[str, int] = {}  # batch id -> GETs still answered 404 (not_found_after_create)
        self._startup_faults = faults
        self._spec: dict[str, Any] = {}
        self._plan = parse_faults(None)
        self.set_faults(faults)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle and Python API --------------------------------------------------------------

    def start(self) -> Emulator:
        if self._server is None:
            self._server = _Server((self.host, self.port), self)
            self.port = self._server.server_address[1]
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"batchpipe-emulator:{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return self.base_url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.base_url

    def set_faults(self, faults: dict[str, Any] | None) -> None:
        """Replace every fault (the spec of the module docstring); counts of `times` restart."""
        plan = parse_faults(faults)
        with self._lock:
            self.engine.set_faults(plan.engine)
            self._plan, self._spec, self._hidden = plan, json.loads(json.dumps(faults or {})), {}

    def set_timing(self, timing: Timing | dict[str, Any]) -> None:
        """Lifecycle seconds for batches created from now on."""
        self.engine.timing = to_timing(timing)

    def requests_seen(self) -> list[dict[str, Any]]:
        """The calls received so far (control calls excepted): seq, at, api, method, path, query, status
        (None: dropped), fault, batch_id, file_id (made by a create, or named in the path)."""
        with self._lock:
            return [dict(entry) for entry in self._log]

    def reset(self) -> None:
        """Startup faults back (counts restarted), call log cleared; stored files and batches stay."""
        self.set_faults(self._startup_faults)
        with self._lock:
            self._log.clear()

    # --- serving -------------------------------------------------------------------------------

    def serve(self, call: Call) -> Reply | None:
        """Answer one call; None means: drop the connection without answering."""
        if call.path.startswith("/_emulator/"):
            return self._control(call)
        api = "anthropic" if call.path.startswith("/v1/messages") else "openai"
        route, args = find_route(call.method, call.path)
        entry: dict[str, Any] = {
            "api": api,
            "method": call.method,
            "path": call.path,
            "query": call.query,
            "status": None,
            "fault": None,
            "batch_id": None,
            "file_id": None,
        }
        if route is not None and route[3] is not None and args:
            entry[f"{route[3]}_id"] = args[0]
        problem = auth_problem(call, api)
        fault = None if problem else self._take_fault(call)
        if problem:
            reply: Reply | None = error_reply(api, problem[0], problem[1])
        elif fault is not None and fault.status is not None:
            reply = self._fault_reply(api, fault)
            entry["fault"] = f"status:{fault.status}"
        elif fault is not None and fault.drop == "before":
            reply, entry["fault"] = None, "drop:before"
        else:
            reply = self._route(call, api, route, args)
            if reply.ref is not None and route is not None:
                entry[f"{route[3]}_id"] = reply.ref
            if fault is not None:  # drop after: the call was handled (a create made its batch), the answer is lost
                reply, entry["fault"] = None, "drop:after"
        if reply is not None:
            entry["status"] = reply.status
            reply.headers.setdefault("request-id" if api == "anthropic" else "x-request-id", new_id("req_"))
        with self._lock:
            entry = {"seq": len(self._log) + 1, "at": time.time(), **entry}
            self._log.append(entry)
        return reply

    def _take_fault(self, call: Call) -> HttpFault | None:
        with self._lock:
            for rule in self._plan.http:
                if not rule.matches(call.method, call.path):
                    continue
                rule.seen += 1
                if rule.seen > rule.skip and (rule.times is None or rule.applied < rule.times):
                    rule.applied += 1
                    return rule
        return None

    @staticmethod
    def _fault_reply(api: str, fault: HttpFault) -> Reply:
        status = int(fault.status or 500)
        default = "Rate limit reached (injected)." if status == 429 else f"Injected HTTP {status}."
        reply = error_reply(api, status, fault.message or default)
        wait = fault.retry_after if fault.retry_after is not None else 1.0 if status == 429 else None
        if wait is not None:
            reply.headers["retry-after"] = f"{wait:g}"
            reply.headers["retry-after-ms"] = str(int(wait * 1000))
        return reply

    def _route(self, call: Call, api: str, route: Route | None, args: tuple[str, ...]) -> Reply:
        if route is None:
            return error_reply(api, 404, f"Unknown request URL: {call.method} {call.path}.")
        if api == "anthropic" and len(call.body) > MAX_ANTHROPIC_BODY_BYTES:
            return error_reply(api, 413, "Request exceeds the maximum allowed size of 256 MB.")
        handler: Callable[..., Reply] = getattr(self, "_" + route[2])
        try:
            return handler(call, *args)
        except ParamError as exc:
            return error_reply(api, 400, str(exc), param=exc.param)
        except InvalidRequest as exc:
            return error_reply(api, 400, str(exc))
        except NotFound as exc:
            return error_reply(api, 404, str(exc))
        except RateLimited as exc:
            return error_reply(api, 429, str(exc))
        except Conflict as exc:
            reply = error_reply(api, 409, str(exc))
            reply.headers["x-should-retry"] = "false"  # the state will not change by retrying at once
            return reply

    def _hide_new(self, batch_id: str, api: str) -> None:
        plan = self._plan
        if plan.not_found_gets and plan.not_found_api in ("any", api):
            with self._lock:
                self._hidden[batch_id] = plan.not_found_gets

    def _check_hidden(self, batch_id: str) -> None:
        with self._lock:
            left = self._hidden.get(batch_id, 0)
            if left:
                self._hidden[batch_id] = left - 1
        if left:
            raise NotFound(f"No such batch: {batch_id}")

    # --- OpenAI Files --------------------------------------------------------------------------

    def _create_file(self, call: Call) -> Reply:
        form = parse_multipart(call.headers.get("content-type", ""), call.body)
        if "file" not in form or form["file"][0] is None:
            raise ParamError("Missing required parameter: 'file'.", "file")
        if "purpose" not in form:
            raise ParamError("Missing required parameter: 'purpose'.", "purpose")
        purpose = form["purpose"][1].decode("utf-8", errors="replace")
        if purpose not in UPLOAD_PURPOSES:
            raise ParamError(f"Invalid value for 'purpose': expected one of {', '.join(UPLOAD_PURPOSES)}.", "purpose")
        expires = None
        if "expires_after[anchor]" in form or "expires_after[seconds]" in form:
            anchor = form.get("expires_after[anchor]", (None, b""))[1].decode()
            seconds = form.get("expires_after[seconds]", (None, b""))[1].decode()
            if not seconds.isdigit():
                raise ParamError("expires_after[seconds] must be an integer.", "expires_after")
            expires = expiry_seconds({"anchor": anchor, "seconds": int(seconds)}, "expires_after")
        meta = self.engine.create_file(form["file"][1], form["file"][0] or "upload", purpose, expires)
        return json_reply(meta, ref=meta["id"])

    def _list_files(self, call: Call) -> Reply:
        limit = call.int_param("limit", 10_000, 1, 10_000)
        order = call.query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise ParamError("Invalid value for 'order': expected 'asc' or 'desc'.", "order")
        files = self.engine.list_files(call.query.get("purpose") or None)
        if order == "asc":
            files.reverse()
        page, has_more = page_of(files, [f["id"] for f in files], limit, after=call.query.get("after"))
        return json_reply(list_body(page, has_more, openai=True))

    def _get_file(self, call: Call, file_id: str) -> Reply:
        return json_reply(self.engine.get_file(file_id))

    def _delete_file(self, call: Call, file_id: str) -> Reply:
        return json_reply(self.engine.delete_file(file_id))

    def _file_content(self, call: Call, file_id: str) -> Reply:
        return Reply(200, self.engine.file_content(file_id), content_type="application/octet-stream")

    # --- OpenAI Batches ------------------------------------------------------------------------

    def _create_batch(self, call: Call) -> Reply:
        body = call.json()
        allowed = ("input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after")
        for key in body:
            if key not in allowed:
                raise ParamError(f"Unrecognized request argument supplied: {key}", key)
        for key in allowed[:3]:
            if body.get(key) is None:
                raise ParamError(f"Missing required parameter: '{key}'.", key)
            if not isinstance(body[key], str):
                raise ParamError(f"Invalid type for '{key}': expected a string.", key)
        rec = self.engine.create_batch(
            request_format="openai",
            endpoint=body["endpoint"],
            input_file_id=body["input_file_id"],
            completion_window=body["completion_window"],
            metadata=body.get("metadata"),
            output_expires_after=expiry_seconds(body.get("output_expires_after"), "output_expires_after"),
        )
        self._hide_new(rec.id, "openai")
        return json_reply(self.engine.openai_batch(rec), ref=rec.id)

    def _list_batches(self, call: Call) -> Reply:
        limit = call.int_param("limit", 20, 1, 100)
        records = self.engine.list_batches("openai")
        page, has_more = page_of(records, [r.id for r in records], limit, after=call.query.get("after"))
        return json_reply(list_body([self.engine.openai_batch(r) for r in page], has_more, openai=True))

    def _get_batch(self, call: Call, batch_id: str) -> Reply:
        self._check_hidden(batch_id)
        return json_reply(self.engine.openai_batch(self.engine.get_batch(batch_id, "openai")))

    def _cancel_batch(self, call: Call, batch_id: str) -> Reply:
        self.engine.get_batch(batch_id, "openai")
        return json_reply(self.engine.openai_batch(self.engine.cancel_batch(batch_id)))

    def _chat_completion(self, call: Call) -> Reply:
        status, body = self.engine.respond_now("openai", call.json())
        return json_reply(body, status)

    # --- Anthropic Message Batches -------------------------------------------------------------

    def _create_message_batch(self, call: Call) -> Reply:
        body = call.json()
        for key in body:
            if key != "requests":
                raise ParamError(f"{key}: Extra inputs are not permitted")
        rec = self.engine.create_batch(request_format="anthropic", requests=body.get("requests"))
        self._hide_new(rec.id, "anthropic")
        return json_reply(self.engine.anthropic_batch(rec), ref=rec.id)

    def _list_message_batches(self, call: Call) -> Reply:
        limit = call.int_param("limit", 20, 1, 1000)
        records = self.engine.list_batches("anthropic")
        page, has_more = page_of(
            records,
            [r.id for r in records],
            limit,
            after=call.query.get("after_id"),
            before=call.query.get("before_id"),
        )
        return json_reply(list_body([self.engine.anthropic_batch(r) for r in page], has_more, openai=False))

    def _get_message_batch(self, call: Call, batch_id: str) -> Reply:
        self._check_hidden(batch_id)
        return json_reply(self.engine.anthropic_batch(self.engine.get_batch(batch_id, "anthropic")))

    def _cancel_message_batch(self, call: Call, batch_id: str) -> Reply:
        self.engine.get_batch(batch_id, "anthropic")
        return json_reply(self.engine.anthropic_batch(self.engine.cancel_batch(batch_id)))

    def _delete_message_batch(self, call: Call, batch_id: str) -> Reply:
        self.engine.get_batch(batch_id, "anthropic")
        self.engine.delete_batch(batch_id)
        return json_reply({"id": batch_id, "type": "message_batch_deleted"})

    def _message_batch_results(self, call: Call, batch_id: str) -> Reply:
        return Reply(200, self.engine.anthropic_results(batch_id), content_type="application/x-jsonl")

    def _message(self, call: Call) -> Reply:
        status, body = self.engine.respond_now("anthropic", call.json())
        return json_reply(body, status)

    # --- control -------------------------------------------------------------------------------

    def _control(self, call: Call) -> Reply:
        name = call.path[len("/_emulator/") :].strip("/")
        try:
            if (call.method, name) == ("GET", "requests"):
                return json_reply({"data": self.requests_seen()})
            if (call.method, name) == ("GET", "faults"):
                with self._lock:
                    return json_reply(self._spec)
            if (call.method, name) == ("POST", "faults"):
                self.set_faults(call.json())
                return json_reply(self._spec)
            if (call.method, name) == ("POST", "timing"):
                self.set_timing(call.json())
                return json_reply(asdict(self.engine.timing))
            if (call.method, name) == ("POST", "reset"):
                self.reset()
                return json_reply({"reset": True})
            if (call.method, name) == ("GET", "health"):
                return json_reply({"ok": True})
        except (ValueError, TypeError) as exc:
            return json_reply({"error": {"message": str(exc)}}, 400)
        return json_reply({"error": {"message": f"Unknown control call: {call.method} {call.path}"}}, 404)


def find_route(method: str, path: str) -> tuple[Route | None, tuple[str, ...]]:
    """The route for (method, path) and the ids in its path."""
    for route in ROUTES:
        found = route[1].fullmatch(path)
        if found and route[0] == method:
            return route, found.groups()
    return None, ()


def auth_problem(call: Call, api: str) -> tuple[int, str] | None:
    """(401, message) when the call carries no key, else None. Keys are never stored."""
    scheme, _, token = call.headers.get("authorization", "").partition(" ")
    bearer = scheme.lower() == "bearer" and bool(token.strip())
    if api == "openai":
        return (
            None
            if bearer
            else (
                401,
                "You didn't provide an API key. You need to provide your API key in "
                "an Authorization header using Bearer auth (Authorization: Bearer KEY).",
            )
        )
    if not (call.headers.get("x-api-key", "").strip() or bearer):
        return 401, "x-api-key header is required"
    if not call.headers.get("anthropic-version", "").strip():
        return 400, "anthropic-version: header is required"
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], emulator: Emulator):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.emulator = emulator
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def close_connections(self) -> None:
        with self.connections_lock:
            open_now = list(self.connections)
        for conn in open_now:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs' connection pools expect
    server_version = "batchpipe-emulator"
    timeout = 300  # idle keep-alive connections end after this
    server: _Server

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):  # headers and body go out in separate writes: no Nagle delay
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def _handle(self) -> None:
        url = urlsplit(self.path)
        try:
            body = self._read_body()
        except ValueError as exc:
            self.close_connection = True
            self._send(error_reply("openai", 400, str(exc)))
            return
        query = {key: values[-1] for key, values in parse_qs(url.query, keep_blank_values=True).items()}
        headers = {key.lower(): value for key, value in self.headers.items()}
        reply = self.server.emulator.serve(Call(self.command, url.path, query, headers, body))
        if reply is None:  # the drop fault: close without a word
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._send(reply)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _handle

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        if length < 0 or length > MAX_BODY_BYTES:
            raise ValueError("Request body too large.")
        return self.rfile.read(length) if length else b""

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for key, value in reply.headers.items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server API)
        pass  # quiet; the call log is Emulator.requests_seen(), which holds no headers (no keys)
