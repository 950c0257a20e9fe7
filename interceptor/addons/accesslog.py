"""The access log: one line per exchange, as a hook on `flow_end`.

Text lines read like a web server's; in JSON mode every field is its own key, so log shippers
need no parsing.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ..http import HTTPFlow

_log = Logger(namespace="interceptor.access")


class AccessLog:
    """Addon: logs client, method, URL, status, bytes and duration of each exchange."""

    def __init__(self, clock: IReactorTime, details: bool = False) -> None:
        self.clock = clock
        # JSON logs: every line also carries the flow's upstream and TLS, and its timings (text
        # lines keep their fixed shape, and the hot path its cost). Both carry the flow's id,
        # and inside an intercepted CONNECT that CONNECT's id as the parent.
        self.details = details

    name = "accesslog"

    def flow_end(self, flow: HTTPFlow) -> None:
        """Log one finished (or failed) exchange."""
        req = flow.request
        duration = self.clock.seconds() - flow.timestamp_created
        if req is not None:
            method, url = req.method, req.url
        elif flow.raw is not None:
            method, url = (part.decode("latin-1") for part in flow.raw)
        else:
            method = url = "-"
        error = flow.error.msg if flow.error is not None else None
        client = flow.client_conn.address_text
        # The line is rendered here once, as `text`: Twisted's format-string machinery would
        # otherwise cost more than the whole proxied exchange (see logs.StdoutObserver).
        fid, parent = flow.id, flow.parent_id
        text = f"{client} {method} {url} {flow.status} {flow.bytes_out} {duration:.4f}s id={fid}"
        if parent is not None:
            text += f" parent={parent}"
        leg = flow._server_leg
        route = getattr(leg, "route", None) if leg is not None else None
        if route is not None:
            text += f" via={route}"  # the upstream proxy it went through (no password)
        if error:
            text += f" ({error})"
        _log.info(
            "{text}",
            text=text,
            id=fid,
            parent_id=parent,
            via=str(route) if route is not None else None,
            client=client,
            method=method,
            url=url,
            status=flow.status,
            bytes=flow.bytes_out,
            bytes_in=flow.bytes_in,
            duration=round(duration, 6),
            error=error,
            **(self._details(flow) if self.details else {}),
        )

    def _details(self, flow: HTTPFlow) -> dict[str, object]:
        """What a JSON line adds: upstream (address, reused), TLS of both legs, timings."""
        out: dict[str, object] = {}
        client = flow.client_conn
        if client.tls_established:
            out.update(client_tls=client.tls_version, client_sni=client.sni)
        leg = flow._server_leg
        start = flow.timestamp_created
        timings: dict[str, float] = {}
        if leg is not None:
            out["upstream"] = leg.peer_text
            # Its first request (perhaps made for the CONNECT before it: eager connects).
            first_use = getattr(leg, "first_use", None)
            setup = first_use() if first_use is not None else None
            out["upstream_reused"] = setup is None
            if getattr(leg, "tls", False):
                server = flow.server_conn
                out.update(upstream_tls=server.tls_version, upstream_sni=server.sni)
            if setup is not None and setup[1] is not None:
                opened, tcp_done, tls_done = setup
                timings["connect"] = tcp_done - opened
                if tls_done is not None:
                    timings["tls"] = tls_done - tcp_done
        resp = flow.response
        if resp is not None:
            timings["ttfb"] = resp.timestamp_start - start
        timings["total"] = self.clock.seconds() - start
        # Flat keys (the JSON lines carry scalars only): connect_s, tls_s, ttfb_s, total_s.
        out.update({f"{key}_s": round(value, 6) for key, value in timings.items()})
        return out

    def tunnel_end(self, flow: HTTPFlow) -> None:
        """Log a passthrough tunnel or a WebSocket relay once it is over: its bytes each way,
        its lifetime and how it ended (its opening was logged as the CONNECT's or 101's line)."""
        req = flow.request
        what = "websocket" if flow.status == 101 else "tunnel"
        target = req.url if req is not None else "-"
        duration = self.clock.seconds() - flow.timestamp_created
        client = flow.client_conn.address_text
        ending = flow.tunnel_ending or "-"
        text = (
            f"{client} {what} {target} closed: {flow.bytes_in} bytes up, {flow.bytes_out} down, "
            f"{duration:.4f}s, {ending} id={flow.id}"
        )
        _log.info(
            "{text}",
            text=text,
            id=flow.id,
            client=client,
            kind=what,
            url=target,
            bytes_up=flow.bytes_in,
            bytes_down=flow.bytes_out,
            duration=round(duration, 6),
            ending=ending,
        )
