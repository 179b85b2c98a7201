"""The HTTP/SSE API for chat widgets and agent desktops (contract §7).

Routes (see ``openapi.json`` beside this file, served at ``/openapi.json``)::

    GET /v1/customers/{id}/context          the §6 document, or 404
    GET /v1/customers/{id}/context/stream   Server-Sent Events: ``context`` now and on change
    GET /healthz  /readyz  /metrics         no token needed
    GET /asyncapi.json  /schemas/{name}     the Kafka interface and its JSON Schemas, no token
    GET /widget                             a reference live-context panel

When tokens are configured, ``/v1`` needs ``Authorization: Bearer <token>``:
a service token (``NEXTBEST_API_TOKENS``, compared in constant time) opens
every customer; a widget token (a JWT, :mod:`nextbest.api.widget_tokens`)
opens the customer it names only — another customer is 403, an expired or
badly signed token 401, each counted by reason in
``nextbest_api_widget_tokens_refused_total`` — and a stream opened with one
ends (``event: expired``) when it expires. Errors are
``{"error": code, "message": text}``. Requests over the size limit get 413;
clients over their rate get 429.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import resources

import orjson
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from redis.exceptions import RedisError

from nextbest import schemas
from nextbest.api.contexts import ContextSource
from nextbest.api.limits import RateLimiter
from nextbest.api.widget_tokens import Grant, TokenRefused, WidgetTokens, looks_like_a_jwt
from nextbest.core.envelope import TYPE_NAME
from nextbest.core.identity import CUSTOMER

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CUSTOMER_ID_MAX = 128
GRANT = web.RequestKey("grant", Grant)  # on a request authorized by a widget token
# refusal reasons declared at start, so that rate() has a series before the first one
REFUSAL_REASONS = ("expired", "invalid_signature", "unknown_key", "malformed", "wrong_customer")


@dataclass(frozen=True)
class ApiConfig:
    tokens: Sequence[str] = ()
    rate_limit: float = 20.0
    rate_burst: int = 40
    max_request_bytes: int = 16384
    keepalive: float = 15.0
    widget_tokens: WidgetTokens | None = None


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "nextbest_api_requests",
            "HTTP requests, by route template and status.",
            ["route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "nextbest_api_request_seconds",
            "Time to answer a request (to the first byte for streams).",
            ["route"],
            registry=registry,
        )
        self.streams = Gauge(
            "nextbest_api_streams", "Open Server-Sent Event streams.", registry=registry
        )
        self.updates = Counter(
            "nextbest_api_stream_updates",
            "Context documents pushed to open streams.",
            registry=registry,
        )
        self.widget_tokens_accepted = Counter(
            "nextbest_api_widget_tokens_accepted",
            "Requests a widget token was accepted for.",
            registry=registry,
        )
        self.widget_tokens_refused = Counter(
            "nextbest_api_widget_tokens_refused",
            "Requests refused for their widget token: 401 (expired, invalid_signature, "
            "unknown_key, malformed, ...) or 403 (wrong_customer). The reason "
            "only: never the customer.",
            ["reason"],
            registry=registry,
        )
        for reason in REFUSAL_REASONS:
            self.widget_tokens_refused.labels(reason)


def _error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response(
        {"error": code, "message": message},
        status=status,
        headers=headers or None,
        dumps=lambda value: orjson.dumps(value).decode(),
    )


def _document_response(document: bytes) -> web.Response:
    return web.Response(body=document, content_type="application/json")


def _route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _version(document: bytes) -> int:
    try:
        value = orjson.loads(document).get("version", -1)
    except (orjson.JSONDecodeError, AttributeError):
        return -1
    return value if isinstance(value, int) else -1


class ContextApi:
    """The aiohttp application, around a :class:`ContextSource`."""

    def __init__(
        self,
        contexts: ContextSource,
        config: ApiConfig,
        metrics: ApiMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._contexts = contexts
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self._limiter = RateLimiter(config.rate_limit, config.rate_burst)
        self._tokens = [t.encode() for t in config.tokens]
        self._widgets = config.widget_tokens

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self._config.max_request_bytes,
            middlewares=[self._observe, self._guard],
        )
        app.router.add_get("/v1/customers/{customer_id}/context", self.get_context)
        app.router.add_get("/v1/customers/{customer_id}/context/stream", self.stream_context)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/openapi.json", self.openapi)
        app.router.add_get("/asyncapi.json", self.asyncapi)
        app.router.add_get("/schemas/{name:.+}", self.schema)
        app.router.add_get("/widget", self.widget)
        return app

    # --- middlewares ----------------------------------------------------------------

    @web.middleware
    async def _observe(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = _route_of(request)
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as error:
            status = error.status
            return _error(error.status, error.reason.lower().replace(" ", "_"), error.reason)
        finally:
            self._metrics.requests.labels(route, str(status)).inc()
            self._metrics.latency.labels(route).observe(time.perf_counter() - started)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if (request.content_length or 0) > self._config.max_request_bytes:
            return _error(
                413,
                "request_too_large",
                f"requests may carry at most {self._config.max_request_bytes} bytes",
            )
        if not request.path.startswith("/v1/"):
            return await handler(request)
        presented = self._presented(request)
        token = self._token(presented)
        client = f"token:{self._tokens.index(token)}" if token else f"ip:{request.remote}"
        if token is None and self._widgets is not None and looks_like_a_jwt(presented):
            try:
                grant = self._widgets.verify(presented)
            except TokenRefused as refusal:
                self._metrics.widget_tokens_refused.labels(refusal.reason).inc()
                return _error(
                    401,
                    "invalid_token",
                    str(refusal),
                    **{"WWW-Authenticate": 'Bearer realm="nextbest", error="invalid_token"'},
                )
            refused = await self._out_of_scope(request, grant)
            if refused is not None:
                return refused
            self._metrics.widget_tokens_accepted.inc()
            request[GRANT] = grant
            # the limiter's key, in memory only: a widget's customer, hashed
            client = "widget:" + hashlib.sha256(grant.customer_id.encode()).hexdigest()[:16]
        elif token is None and (self._tokens or self._widgets is not None):
            return _error(
                401,
                "unauthorized",
                "this route needs 'Authorization: Bearer <token>'",
                **{"WWW-Authenticate": 'Bearer realm="nextbest"'},
            )
        wait = self._limiter.allow(client, self._clock())
        if wait > 0:
            return _error(
                429,
                "rate_limited",
                "too many requests; slow down",
                **{"Retry-After": str(max(1, math.ceil(wait)))},
            )
        return await handler(request)

    async def _out_of_scope(self, request: web.Request, grant: Grant) -> web.Response | None:
        """403 when a widget token asks for anything but its own customer's context.

        ``?type=`` (contract §10) finds a profile by another identifier: allowed
        when it is one of the token's own customer's (whether it is anyone
        else's, or no one's, is not told).
        """
        requested = request.match_info.get("customer_id")
        kind = request.query.get("type", CUSTOMER)
        if kind != CUSTOMER and requested is not None and TYPE_NAME.match(kind):
            try:
                requested = await self._contexts.resolve(kind, requested)
            except (RedisError, OSError):
                requested = None
        if requested == grant.customer_id:
            return None
        self._metrics.widget_tokens_refused.labels("wrong_customer").inc()
        return _error(403, "forbidden", "this widget token is for another customer's context")

    @staticmethod
    def _presented(request: web.Request) -> str:
        """The bearer token of the request, or ''."""
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        return presented.strip() if scheme.lower() == "bearer" else ""

    def _token(self, presented: str) -> bytes | None:
        """The configured service token ``presented`` is, compared in constant time."""
        if not presented:
            return None
        candidate = presented.encode()
        found = None
        for token in self._tokens:  # compare with every token: no early exit
            if hmac.compare_digest(candidate, token):
                found = token
        return found

    # --- routes ---------------------------------------------------------------------

    def _customer(self, request: web.Request) -> str:
        customer_id = request.match_info["customer_id"]
        if not 0 < len(customer_id) <= CUSTOMER_ID_MAX:
            raise web.HTTPBadRequest(reason="Invalid customer id")
        return customer_id

    async def _profile(self, request: web.Request) -> str | web.Response:
        """The profile id the request names: the path's id, or with ``?type=<type>`` the
        profile of that identifier (contract §10); a response when there is none."""
        identifier = self._customer(request)
        kind = request.query.get("type", CUSTOMER)
        if kind == CUSTOMER:
            return identifier
        if not TYPE_NAME.match(kind):
            return _error(400, "invalid_type", "type must be an identity type such as phone")
        profile = await self._contexts.resolve(kind, identifier)
        if profile is None:
            return _error(404, "not_found", f"no profile has this {kind} identifier")
        return profile

    async def get_context(self, request: web.Request) -> web.StreamResponse:
        profile = await self._profile(request)
        if isinstance(profile, web.Response):
            return profile
        document = await self._contexts.get(profile)
        if document is None:
            return _error(404, "not_found", "no context for this customer")
        return _document_response(document)

    async def stream_context(self, request: web.Request) -> web.StreamResponse:
        profile = await self._profile(request)
        if isinstance(profile, web.Response):
            return profile
        customer_id = profile
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        grant = request.get(GRANT)
        async with self._contexts.watch(customer_id) as updates:
            # subscribed first, read second: no change can fall between the two
            current = await self._contexts.get(customer_id)
            await response.prepare(request)
            self._metrics.streams.inc()
            try:
                last = -1
                if current is not None:
                    last = _version(current)
                    await self._send(response, current, last)
                while True:
                    wait = self._config.keepalive
                    if grant is not None and self._widgets is not None:
                        left = self._widgets.remaining(grant)
                        if left <= 0:  # the stream never outlives its widget token
                            await response.write(b"event: expired\ndata: {}\n\n")
                            break
                        wait = min(wait, left)
                    try:
                        document = await asyncio.wait_for(updates.get(), wait)
                    except TimeoutError:
                        await response.write(b": keep-alive\n\n")
                        continue
                    if not document:  # merged into another profile, or erased: look again
                        await response.write(b"event: gone\ndata: {}\n\n")
                        break
                    version = _version(document)
                    if version >= last:
                        last = version
                        await self._send(response, document, version)
            except ConnectionResetError:
                pass  # the client went away: leaving the block frees its watch
            finally:
                self._metrics.streams.dec()
        return response

    async def _send(self, response: web.StreamResponse, document: bytes, version: int) -> None:
        await response.write(b"event: context\nid: %d\ndata: %s\n\n" % (version, document))
        self._metrics.updates.inc()

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        if await self._contexts.ready():
            return web.json_response({"ready": True})
        return _error(503, "not_ready", "Redis does not answer")

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=generate_latest(self._metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        return _document_response(_asset("openapi.json"))

    async def asyncapi(self, request: web.Request) -> web.StreamResponse:
        return _document_response(schemas.asyncapi())

    async def schema(self, request: web.Request) -> web.StreamResponse:
        """A schema file; openapi.json's ``../schemas/...`` references resolve here."""
        try:
            body = schemas.read(request.match_info["name"])
        except KeyError:
            return _error(404, "not_found", "no such schema (see /asyncapi.json)")
        return web.Response(body=body, content_type="application/schema+json")

    async def widget(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=_asset("widget.html"), content_type="text/html")


def _asset(name: str) -> bytes:
    return resources.files("nextbest.api").joinpath(name).read_bytes()
