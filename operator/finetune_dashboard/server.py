"""The dashboard's HTTP server (aiohttp): the page, its bundled script, a JSON API and a live stream.

- ``/``: the single page (the job list, one job, a comparison; the browser routes by ``#``);
- ``/api/jobs``: the job list; ``/api/jobs/NS/NAME``: one job with its curves and events;
  ``/api/jobs/NS/NAME/log?rank=N``: the tail of a trainer's log;
- ``/api/stream``: server-sent events, the job list again each time a job changes.
Everything the page loads comes from here (a Content-Security-Policy says so to the browser).
"""

from __future__ import annotations

import asyncio
import json
from importlib.resources import files
from pathlib import Path
from typing import Any

from aiohttp import web

from finetune_dashboard import kube, views

STATIC = Path(str(files("finetune_dashboard") / "static"))
STREAM_POLL_SECONDS = 0.25
STREAM_HEARTBEAT_SECONDS = 15.0
CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'"
STORE: web.AppKey[kube.JobStore] = web.AppKey("store", kube.JobStore)


@web.middleware
async def _headers(request: web.Request, handler: Any) -> web.StreamResponse:
    response = await handler(request)
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _summaries(store: kube.JobStore) -> list[dict[str, Any]]:
    return [views.job_summary(obj) for obj in store.jobs()]


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def healthz(request: web.Request) -> web.Response:
    ready = request.app[STORE].wait_ready(0)
    return web.Response(status=200 if ready else 503, text="ok" if ready else "listing FineTuneJobs")


async def list_jobs(request: web.Request) -> web.Response:
    return web.json_response(_summaries(request.app[STORE]))


def _job_or_404(request: web.Request) -> dict[str, Any]:
    ns, name = request.match_info["namespace"], request.match_info["name"]
    obj = request.app[STORE].get(ns, name)
    if obj is None:
        raise web.HTTPNotFound(text=f"no FineTuneJob {ns}/{name} in the namespaces this dashboard watches")
    return obj


async def job(request: web.Request) -> web.Response:
    obj = _job_or_404(request)
    meta = obj["metadata"]
    events = await asyncio.to_thread(kube.list_events, meta["namespace"], meta["name"])
    return web.json_response(views.job_detail(obj, events))


async def job_log(request: web.Request) -> web.Response:
    obj = _job_or_404(request)
    try:
        rank = int(request.query.get("rank", "0"))
    except ValueError:
        raise web.HTTPBadRequest(text=f"rank={request.query['rank']!r}: give a node rank, 0 or more") from None
    meta = obj["metadata"]
    text = await asyncio.to_thread(kube.trainer_log, meta["namespace"], meta["name"], rank)
    if text is None:
        raise web.HTTPNotFound(text=f"{meta['name']} has no pod of rank {rank} (yet)")
    return web.Response(text=text)


async def stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: ``jobs`` with the list at once, and again after each change."""
    store = request.app[STORE]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
    await response.prepare(request)
    sent, quiet = -1, 0.0
    try:
        while True:
            if store.version != sent:
                sent = store.version
                payload = json.dumps(_summaries(store), separators=(",", ":"))
                await response.write(f"event: jobs\ndata: {payload}\n\n".encode())
                quiet = 0.0
            elif quiet >= STREAM_HEARTBEAT_SECONDS:
                await response.write(b": keep-alive\n\n")
                quiet = 0.0
            await asyncio.sleep(STREAM_POLL_SECONDS)
            quiet += STREAM_POLL_SECONDS
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    return response


def make_app(store: kube.JobStore) -> web.Application:
    """The application over a started (or about to start) store."""
    app = web.Application(middlewares=[_headers])
    app[STORE] = store
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/jobs", list_jobs)
    app.router.add_get("/api/stream", stream)
    app.router.add_get("/api/jobs/{namespace}/{name}", job)
    app.router.add_get("/api/jobs/{namespace}/{name}/log", job_log)
    app.router.add_static("/static/", STATIC)
    return app
