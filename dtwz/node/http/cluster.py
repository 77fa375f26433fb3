"""The node's open routes: liveness, readiness, metrics, the cluster view and the
small HTML page. They need no signature (``OPEN_ROUTES``): none of them shows
object data.

Routes::

    GET /health     {"status": "ok", "node_id"}
    GET /ready      {"ready", "node_id"}, 503 until the node has joined
    GET /metrics    Prometheus text: the node's counters, HTTP requests and latency
    GET /cluster    the node's status: members, counters of every part
    GET /           the same as a page, with a form that draws a graph
"""

from __future__ import annotations

import html
import json
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dtwz.node.http.context import NodeApi, node_of

OPEN_ROUTES = frozenset({"/health", "/ready", "/metrics", "/cluster", "/"})

METRICS_KEY = web.AppKey("metrics", CollectorRegistry)


class NodeCollector(Collector):
    """Exports the node's counters at scrape time (no bookkeeping on the hot path)."""

    def __init__(self, node: NodeApi) -> None:
        self.node = node

    def collect(self) -> Any:
        status = self.node.status()
        for section in ("store", "peer", "service", "cache", "node", "names"):
            family = GaugeMetricFamily(
                f"dtwz_{section}", f"dtwz {section} counters", labels=["name"]
            )
            for name, value in status[section].items():
                family.add_metric([name], float(value))
            yield family
        yield GaugeMetricFamily(
            "dtwz_members_alive",
            "live members",
            value=sum(m["state"] in ("alive", "suspect") for m in status["members"]),
        )
        yield GaugeMetricFamily("dtwz_copies", "copies of remote objects", value=status["copies"])


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "node_id": node_of(request).node_id})


async def ready(request: web.Request) -> web.Response:
    node = node_of(request)
    ok = node.is_ready()
    return web.json_response({"ready": ok, "node_id": node.node_id}, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS_KEY])
    return web.Response(body=body, content_type="text/plain", charset="utf-8")


async def cluster(request: web.Request) -> web.Response:
    return web.json_response(node_of(request).status())


async def index(request: web.Request) -> web.Response:
    node = node_of(request)
    status = node.status()
    rows = "".join(
        f"<tr><td>{html.escape(m['node_id'])}</td><td>{m['state']}</td>"
        f"<td><a href='{html.escape(m['http'])}/'>{html.escape(m['http'])}</a></td></tr>"
        for m in status["members"]
    )
    root = status.get("root")
    graph_form = (  # the same drawings as `dtwz graph ROOT --format html`
        "<h2>object graph</h2><form action='/graph/view'>"
        "<input name='root' size=34 placeholder='object ID (32 hex digits)' required> "
        "<input name='depth' size=4 placeholder='depth'> <button>draw</button></form>"
        + (
            "<p>Security is on: a browser cannot sign, so open drawings from a signed link, "
            "<code>dtwz graph ROOT --link</code>.</p>"
            if node.access is not None
            else ""
        )
        + (
            f"<p><a href='/graph/view?root={root}&amp;depth=2'>the namespace root</a></p>"
            if root
            else ""
        )
    )
    body = (
        f"<!doctype html><title>dtwz {html.escape(status['node_id'])}</title>"
        f"<h1>dtwz node {html.escape(status['node_id'])}</h1>"
        f"<table border=1><tr><th>member</th><th>state</th><th>http</th></tr>{rows}</table>"
        f"{graph_form}"
        f"<pre>{html.escape(json.dumps(status, indent=2))}</pre>"
    )
    return web.Response(text=body, content_type="text/html")
