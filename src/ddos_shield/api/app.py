"""The REST API and the dashboard's routes (docs/api.md lists them with examples).

:func:`create_app` builds the FastAPI application over a :class:`ShieldView` and a
:class:`TokenStore`.  Every route needs a token (``Authorization: Bearer ...``) with
at least the role it names, except ``/healthz`` and the dashboard's static code
(the same files for everyone, no data: a browser needs them to show the login).

Roles: viewer reads; operator also adds, approves and withdraws mitigations;
admin also views, validates and reloads the configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.sse import EventSourceResponse, ServerSentEvent
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, Field, StrictBool, model_validator

from ddos_shield import __version__
from ddos_shield.api.metrics import render
from ddos_shield.api.tokens import LOCAL_NAME, Role, TokenStore
from ddos_shield.api.view import ReloadRefused, ShieldView
from ddos_shield.engine import MAX_MANUAL_TTL
from ddos_shield.errors import ShieldError
from ddos_shield.records import Action, Match, Rule
from ddos_shield.store.history import History

API = "/api/v1"
#: seconds between the snapshots the live stream pushes (the dashboard's chart step)
STREAM_INTERVAL = 1.0
#: config fields whose values are secrets (webhook keys, SMTP passwords): never shown
_SECRET_WORDS = ("secret", "password", "token", "key")

_bearer = HTTPBearer(auto_error=False, description="an API token: `ddos-shield token create NAME --role ROLE`")


class Principal(BaseModel):
    """Who is calling: the token's name and role, and the actor its changes are recorded as."""

    name: str
    role: str
    actor: str


class MitigationIn(BaseModel):
    match: dict[str, Any] = Field(
        description="what to match, as rules show it: proto, src, dst (CIDR), sport/dport/length/ttl "
        "({min, max} or one number), tcp_flags ({mask, value})",
        examples=[{"proto": 17, "dst": "203.0.113.10/32", "dport": 53}],
    )
    action: Literal["drop", "rate_limit", "observe", "blackhole"] = Field(
        "drop",
        description="blackhole: a route for one address (match only dst, /32 or /128) with the BLACKHOLE "
        "community 65535:666, announced by the bgp backend; admin tokens only",
    )
    ttl: float = Field(gt=0, le=MAX_MANUAL_TTL, description="seconds the rule stays unless withdrawn")
    rate_pps: int = Field(0, ge=0, description="with action rate_limit: packets per second let through")
    per_source: StrictBool = Field(
        False, description="with action rate_limit: rate_pps applies to each source address separately"
    )
    backend: str | None = Field(
        None,
        description="enforcement backend by name (default: the shield's; bgp for a blackhole); 'bgp' with drop "
        "or rate_limit announces the rule upstream as Flowspec",
    )
    reason: str = Field(min_length=1, max_length=500, description="why: recorded with the rule and the event")

    @model_validator(mode="after")
    def _check_rate(self) -> MitigationIn:
        if self.action == "rate_limit" and self.rate_pps <= 0:
            raise ValueError(f"rate_pps: a rate limit needs a positive rate, got {self.rate_pps}")
        if self.action != "rate_limit" and self.rate_pps:
            raise ValueError(f"rate_pps: only for action rate_limit, got {self.rate_pps} with {self.action}")
        if self.per_source and self.action != "rate_limit":
            raise ValueError(f"per_source: only for action rate_limit, not {self.action}")
        return self


class WithdrawIn(BaseModel):
    reason: str = Field("withdrawn by an operator", min_length=1, max_length=500)


class ReloadIn(BaseModel):
    text: str | None = Field(None, description="a whole new configuration (TOML); absent: re-read the file")
    save: bool = Field(True, description="with text: also write it over the configuration file once in force")


class ValidateIn(BaseModel):
    text: str = Field(description="a whole configuration (TOML)")


def _redact(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {
            k: ("***" if v and any(w in k.lower() for w in _SECRET_WORDS) and isinstance(v, str) else _redact(v))
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [_redact(v) for v in obj]
    return obj


# The two dependencies below are coroutines although they block for a moment (a stat of
# the token file, a few hashes): FastAPI would run plain functions in its thread pool,
# and every hop there waits for the GIL behind the engine's thread.
async def principal(
    request: Request, cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    """The caller, from its bearer token; 401 without a valid one."""
    if cred is None or cred.scheme.lower() != "bearer":
        raise HTTPException(401, "a token is needed: Authorization: Bearer <token>", {"WWW-Authenticate": "Bearer"})
    tokens: TokenStore = request.app.state.tokens
    try:
        tok = tokens.verify(cred.credentials)
    except ShieldError as e:  # a damaged token file: nobody is let in, and the answer says why
        raise HTTPException(503, str(e)) from e
    if tok is None:
        raise HTTPException(401, "unknown or revoked token", {"WWW-Authenticate": "Bearer"})
    actor = f"token:{tok.name}"
    if tok.name == LOCAL_NAME:
        # only root can read the local token (see tokens.py); the user it names is
        # the one the command line ran for, recorded for the audit trail
        user = request.headers.get("x-ddos-shield-user", "")
        actor = f"cli:{user}" if user.isprintable() and 0 < len(user) <= 64 else "cli:root"
    return Principal(name=tok.name, role=str(tok.role), actor=actor)


def need(role: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the caller, when its role is ``role`` or above; 403 otherwise."""

    async def dep(p: Annotated[Principal, Depends(principal)]) -> Principal:
        if Role.parse(p.role) < role:
            raise HTTPException(403, f"token {p.name!r} has role {p.role}; this needs {role} or above")
        return p

    return dep


Viewer = Annotated[Principal, Depends(need(Role.VIEWER))]
Operator = Annotated[Principal, Depends(need(Role.OPERATOR))]
Admin = Annotated[Principal, Depends(need(Role.ADMIN))]


def create_app(view: ShieldView, tokens: TokenStore, *, metrics: CollectorRegistry | None = None) -> FastAPI:
    """The application; serve it with :class:`ddos_shield.api.server.ApiServer`.
    ``metrics`` is served at ``/metrics`` (Prometheus text format, viewer token)."""
    app = FastAPI(
        title="DDoS Shield",
        version=__version__,
        description=__doc__,
        # the document is served below, to a token like everything else; no Swagger page:
        # it would load its code from a CDN, and a shield's host may have no way out
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    # set by the server at stop: live streams end within a second
    closing = threading.Event()
    app.state.closing = closing

    app.state.tokens = tokens

    # /healthz and /status are coroutines: they never wait for the engine (the snapshot of
    # the tick before when one runs), and a coroutine answers without a hop through the
    # thread pool, where a busy engine thread would make each hop wait for the GIL
    @app.get("/healthz", tags=["status"])
    async def healthz() -> JSONResponse:
        """Liveness without a token: 200 while the control loop ticks, 503 when it stalled."""
        snap, _ = view.quick_snapshot(wait=0.0)
        ticked = snap.get("ticked_at")
        limit = 2.0 + 5 * view.config.shield.interval_ms / 1000
        age = time.time() - ticked if ticked else None
        ok = age is not None and age < limit
        return JSONResponse({"status": "ok" if ok else "stalled", "loop_age_s": age}, 200 if ok else 503)

    if metrics is not None:
        registry = metrics

        @app.get("/metrics", tags=["status"], response_class=Response)
        def prometheus(p: Viewer) -> Response:
            """Prometheus metrics (docs/operating.md lists them); scrape with a viewer token
            (``authorization: {type: Bearer, credentials: ...}`` in the scrape config)."""
            body, kind = render(registry)
            return Response(body, media_type=kind)

    r = APIRouter(prefix=API)

    @r.get("/openapi.json", tags=["status"])
    def openapi(p: Viewer) -> dict[str, Any]:
        """This API's OpenAPI document."""
        return app.openapi()

    # ---- status and traffic -------------------------------------------------------

    @r.get("/status", tags=["status"])
    async def status(p: Viewer) -> dict[str, Any]:
        """The shield at a glance: data plane, loop, attacks and rules in force.  It answers
        at once even while a long tick runs, with the figures of the tick before
        (``as_of`` says when they were taken)."""
        snap, as_of = view.quick_snapshot(wait=0.0)
        cfg = view.config
        return {
            "as_of": round(as_of, 3),
            "version": __version__,
            "uptime_s": round(time.time() - view.started, 1),
            "dataplane": snap.get("dataplane_kind"),
            "backend": snap.get("backend"),
            "dry_run": cfg.shield.dry_run,
            "interfaces": cfg.shield.interfaces,
            "attacks_active": len(snap["attacks"]),
            "mitigations_active": len(snap["rules"]),
            "pps": snap["pps"],
            "bps": snap["bps"],
            "destinations": snap["destinations"],
            "sample_every": snap["sample_every"],
            "loop_ms_p50": snap["loop_ms_p50"],
            "loop_ms_max": snap["loop_ms_max"],
            "ticked_at": snap.get("ticked_at"),
            "dataplane_stats": snap["dataplane"],
            "sources": snap["sources"],
            "you": p.model_dump(),
        }

    @r.get("/traffic", tags=["traffic"])
    def traffic(p: Viewer, top: Annotated[int, Query(ge=1, le=1000)] = 10) -> dict[str, Any]:
        """Rates by protocol, top destinations, top sources (estimated from samples), per host group."""
        return view.traffic(top)

    # ---- attacks --------------------------------------------------------------------

    @r.get("/attacks", tags=["attacks"])
    def attacks(
        p: Viewer,
        state: Literal["all", "active", "ended"] = "all",
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """Attacks under way and recent ones (newest first): types, peaks, rules (fingerprints)."""
        return {"attacks": view.attacks.list(state, limit)}

    @r.get("/attacks/{attack_id}", tags=["attacks"])
    def attack(p: Viewer, attack_id: int) -> dict[str, Any]:
        """One attack with its timeline (ts, pps, bps) and every action taken on it."""
        a = view.attacks.get(attack_id)
        if a is None:
            raise HTTPException(404, f"no attack {attack_id} in this shield's memory")
        return a

    @r.get("/events", tags=["attacks"])
    def events(p: Viewer, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
        """The most recent events, oldest first."""
        return {"events": view.recent_events(limit)}

    # ---- history (the store) ----------------------------------------------------------

    def history() -> History:
        if view.history is None:
            raise HTTPException(404, "this shield keeps no history ([store] enabled = false)")
        return view.history

    @r.get("/history/attacks", tags=["history"])
    def past_attacks(
        p: Viewer,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
        since: float | None = None,
        until: float | None = None,
        target: str | None = None,
        active: bool | None = None,
    ) -> dict[str, Any]:
        """Attacks kept in the history database, newest first (across restarts)."""
        h = history()
        return {
            "attacks": h.attacks(limit=limit, offset=offset, since=since, until=until, target=target, active=active)
        }

    @r.get("/history/attacks/{attack_id}", tags=["history"])
    def past_attack(p: Viewer, attack_id: int) -> dict[str, Any]:
        """One attack from the history: timeline, mitigations, fingerprints."""
        a = history().attack(attack_id)
        if a is None:
            raise HTTPException(404, f"no attack {attack_id} in the history")
        return a

    @r.get("/history/attacks/{attack_id}/pcap", tags=["history"])
    def past_attack_pcap(p: Viewer, attack_id: int) -> Response:
        """The attack's sampled packets as a pcapng file (opens in Wireshark and tshark)."""
        data = history().pcap(attack_id)
        if data is None:
            raise HTTPException(404, f"no attack {attack_id} in the history")
        return Response(
            data,
            media_type="application/x-pcapng",
            headers={"content-disposition": f'attachment; filename="attack-{attack_id}.pcapng"'},
        )

    @r.get("/history/mitigations", tags=["history"])
    def past_mitigations(
        p: Viewer,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
        attack_id: int | None = None,
        active: bool | None = None,
    ) -> dict[str, Any]:
        """Mitigations kept in the history, newest first."""
        return {"mitigations": history().mitigations(limit=limit, offset=offset, attack_id=attack_id, active=active)}

    @r.get("/audit", tags=["history"])
    def audit(
        p: Operator,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
        since: float | None = None,
        actor: str | None = None,
        event: str | None = None,
    ) -> dict[str, Any]:
        """The audit log: every action with who took it and why, newest first."""
        return {"audit": history().audit(limit=limit, offset=offset, since=since, actor=actor, event=event)}

    # ---- mitigations ----------------------------------------------------------------

    @r.get("/mitigations", tags=["mitigations"])
    def mitigations(p: Viewer) -> dict[str, Any]:
        """Every mitigation: rules in force with hit counters and expiry, and those awaiting approval."""
        return {"mitigations": view.mitigations(), "now": time.time()}

    @r.post("/mitigations", tags=["mitigations"], status_code=201)
    def add_mitigation(p: Operator, body: MitigationIn) -> dict[str, Any]:
        """Put a rule in force by hand (recorded with the token's name and the reason)."""
        try:
            match = Match.from_json(body.match)
        except (ValueError, TypeError, KeyError) as e:
            raise HTTPException(422, f"match: {e}") from e
        if not match.fields():
            raise HTTPException(422, "match: empty; a rule must match something")
        action = Action[body.action.upper()]
        if action == Action.BLACKHOLE and Role.parse(p.role) < Role.ADMIN:
            # it takes the whole target off the Internet: an admin's decision
            why = f"action blackhole needs an admin token; token {p.name!r} has role {p.role}"
            asked = Rule(match, action, time.time() + body.ttl, created_at=time.time(), reason=body.reason)
            view.emit("mitigation_refused", actor=p.actor, reason=why, rule=asked.to_json(), attack_id=0)
            raise HTTPException(403, why)
        try:
            rule = view.add_mitigation(
                match,
                action,
                body.ttl,
                rate_pps=body.rate_pps,
                per_source=body.per_source,
                backend=body.backend,
                actor=p.actor,
                reason=body.reason,
            )
        except ValueError as e:
            raise HTTPException(409, f"refused: {e}") from e
        return {"mitigation": rule.to_json()}

    @r.post("/mitigations/{mitigation_id}/approve", tags=["mitigations"])
    def approve(p: Operator, mitigation_id: int) -> dict[str, Any]:
        """Approve a mitigation that waits for an operator (e.g. a drop on a critical asset)."""
        try:
            rule = view.approve(mitigation_id, actor=p.actor)
        except KeyError as e:
            raise HTTPException(404, f"no mitigation {mitigation_id}") from e
        except ValueError as e:
            raise HTTPException(409, f"refused: {e}") from e
        return {"mitigation": rule.to_json()}

    @r.post("/mitigations/{mitigation_id}/withdraw", tags=["mitigations"])
    def withdraw(p: Operator, mitigation_id: int, body: Annotated[WithdrawIn | None, Body()] = None) -> dict[str, Any]:
        """Withdraw a mitigation now."""
        reason = (body or WithdrawIn()).reason
        try:
            view.withdraw(mitigation_id, actor=p.actor, reason=reason)
        except KeyError as e:
            raise HTTPException(404, f"no mitigation {mitigation_id}") from e
        except ValueError as e:
            raise HTTPException(409, f"refused: {e}") from e
        return {"withdrawn": mitigation_id}

    # ---- protection and configuration -------------------------------------------------

    @r.get("/groups", tags=["configuration"])
    def groups(p: Viewer) -> dict[str, Any]:
        """Host groups: prefixes, thresholds, action, hold times."""
        return {"groups": [g.model_dump() for g in view.config.groups]}

    @r.get("/protection", tags=["configuration"])
    def protection(p: Viewer) -> dict[str, Any]:
        """Protected prefixes, the allow-list (sources never dropped), the never-block list
        (destinations no drop, blackhole or Flowspec rule may cover) and critical assets
        (never dropped automatically: a drop waits for an operator's approval)."""
        cfg = view.config
        return {
            "protected": cfg.protected,
            "allowlist": cfg.allowlist,
            "never_block": cfg.never_block,
            "critical": cfg.critical,
        }

    @r.get("/config", tags=["configuration"])
    def get_config(p: Admin) -> dict[str, Any]:
        """The running configuration (secrets shown as ***) and the file it came from."""
        return {"config": _redact(view.config.model_dump(mode="json")), "file": view.config_path}

    @r.post("/config/validate", tags=["configuration"])
    def validate(p: Admin, body: ValidateIn) -> dict[str, Any]:
        """Check a configuration without applying it: 422 with every problem as file:line: field."""
        try:
            view.validate(body.text)
        except ReloadRefused as e:
            raise HTTPException(422, {"errors": e.errors}) from e
        return {"valid": True}

    @r.post("/config/reload", tags=["configuration"])
    def reload(p: Admin, body: Annotated[ReloadIn | None, Body()] = None) -> dict[str, Any]:
        """Swap in a new configuration at once (posted text, or the file again). Invalid: 422
        with every problem, and the running configuration stays."""
        b = body or ReloadIn()
        try:
            return view.reload(b.text, actor=p.actor, save=b.save)
        except ReloadRefused as e:
            raise HTTPException(422, {"errors": e.errors}) from e

    # ---- the live stream ---------------------------------------------------------------

    @r.get("/stream", tags=["status"], response_class=EventSourceResponse)
    async def stream(p: Viewer) -> AsyncIterator[ServerSentEvent]:
        """Server-sent events: ``snapshot`` every second (rates, attacks, mitigations, top
        talkers) and ``event`` for each shield event as it happens."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)

        def put(e: dict[str, Any]) -> None:
            with contextlib.suppress(asyncio.QueueFull):  # a slow reader loses events, not the shield
                queue.put_nowait(e)

        def on_event(e: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(put, e)

        unsubscribe = view.subscribe(on_event)
        try:
            next_snap = 0.0
            while not closing.is_set():
                now = time.monotonic()
                if now >= next_snap:
                    data = await asyncio.to_thread(live_snapshot, view)
                    yield ServerSentEvent(event="snapshot", data=data)
                    next_snap = now + STREAM_INTERVAL
                try:
                    e = await asyncio.wait_for(queue.get(), timeout=max(0.0, next_snap - time.monotonic()))
                except TimeoutError:
                    continue
                yield ServerSentEvent(event="event", data=e)
        finally:
            unsubscribe()

    app.include_router(r)
    _dashboard(app)
    return app


def live_snapshot(view: ShieldView) -> dict[str, Any]:
    """What the dashboard redraws each second."""
    snap, _ = view.quick_snapshot()
    t = view.traffic(5)
    return {
        "ts": time.time(),
        "pps": snap["pps"],
        "bps": snap["bps"],
        "attacks": snap["attacks"],
        "mitigations": view.mitigations(),
        "top_destinations": t["top_destinations"],
        "top_sources": t["top_sources"],
        "dataplane": snap["dataplane"],
        "loop_ms_p50": snap["loop_ms_p50"],
    }


_STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}


def _dashboard(app: FastAPI) -> None:
    files = resources.files("ddos_shield.ui") / "dashboard"

    def page() -> Response:
        return Response((files / "index.html").read_bytes(), media_type="text/html", headers=_NO_STORE)

    app.add_api_route("/", page, include_in_schema=False)
    # alerts link here (alerts.dashboard_url + /attacks/ID): the same page opens that attack
    app.add_api_route("/attacks/{attack_id}", page, include_in_schema=False)

    def asset(name: str, kind: str) -> Callable[[], Response]:
        def serve() -> Response:
            return Response((files / name).read_bytes(), media_type=kind, headers=_NO_STORE)

        return serve

    for name, kind in _STATIC.items():
        app.add_api_route(f"/static/{name}", asset(name, kind), include_in_schema=False)


#: the page must not be cached: a stale script after an upgrade would talk to a changed API
_NO_STORE = {"cache-control": "no-store", "x-content-type-options": "nosniff"}
