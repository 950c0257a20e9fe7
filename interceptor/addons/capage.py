"""The CA page: `http://interceptor.ca/` through the proxy serves the CA certificate to trust.

An addon on the requestheaders hook (it needs no body, so it makes none be buffered): requests for
the configured host are answered locally, so the page works in any browser already pointed at
the proxy, before the user trusts anything.
"""

from __future__ import annotations

import hashlib
import html

from ..hosts import format_authority
from ..http import HTTPFlow, Response

# What a client needs to trust the CA, and nothing about the server it runs on: the page is
# served to anyone who can use the proxy.
_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>interceptor CA certificate</title></head>
<body>
<h1>interceptor CA certificate</h1>
<p>To let interceptor see your HTTPS traffic, trust this certificate authority once.</p>
<ul>
<li><a href="/ca.pem">ca.pem</a> (PEM: Linux, macOS, Firefox, curl <code>--cacert</code>)</li>
<li><a href="/ca.der">ca.der</a> (DER: Windows, Android)</li>
</ul>
<p>SHA-256 fingerprint: <code>{fingerprint}</code><br>
Check it against the one your browser or system shows before you trust the certificate.</p>
<h2>How to install</h2>
<ul>
<li>curl: <code>curl -x {proxy} --cacert ca.pem https://example.com/</code></li>
<li>Chromium and Chrome on Linux (NSS): <code>certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n
 interceptor -i ca.pem</code> (package <code>libnss3-tools</code>); start it with
 <code>--proxy-server={proxy} --proxy-bypass-list='&lt;-loopback&gt;'</code> so that
 localhost goes through the proxy too</li>
<li>Firefox: Settings, Privacy &amp; Security, Certificates, View Certificates, Authorities,
 Import ca.pem, "Trust this CA to identify websites"</li>
<li>Debian/Ubuntu: <code>sudo cp ca.pem /usr/local/share/ca-certificates/interceptor.crt
 &amp;&amp; sudo update-ca-certificates</code></li>
<li>macOS: <code>sudo security add-trusted-cert -d -r trustRoot -k
 /Library/Keychains/System.keychain ca.pem</code></li>
<li>Windows (an administrator's prompt): <code>certutil -addstore -f ROOT ca.der</code></li>
</ul>
</body></html>
"""


def fingerprint(der: bytes) -> str:
    """The SHA-256 fingerprint of a DER certificate, as browsers show it (AB:CD:...)."""
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


class CAPage:
    """Addon answering requests for `host` with the CA page and certificate downloads."""

    def __init__(self, host: str, cert_pem: bytes, cert_der: bytes) -> None:
        self.host = host.lower()
        self.fingerprint = fingerprint(cert_der)
        self._files = {
            b"/ca.pem": (b"application/x-pem-file", cert_pem),
            b"/ca.der": (b"application/x-x509-ca-cert", cert_der),
        }

    name = "capage"

    def requestheaders(self, flow: HTTPFlow) -> None:
        """Answer locally when the request is for the CA page host."""
        req = flow.request
        if req is None or req._host != self.host:
            return
        path = req._path.split(b"?", 1)[0]
        if path == b"/":
            flow.response = Response.make(
                200, self._page(flow), {"Content-Type": "text/html; charset=utf-8"}
            )
            return
        found = self._files.get(path)
        if found is None:
            flow.response = Response.make(
                404, b"not found: try /ca.pem\n", {"Content-Type": "text/plain; charset=utf-8"}
            )
        else:
            flow.response = Response.make(200, found[1], {"Content-Type": found[0]})

    def _page(self, flow: HTTPFlow) -> bytes:
        # The address this client reached the proxy on: what it should configure elsewhere.
        reached = flow.client_conn.sockname
        proxy = f"http://{format_authority(*reached)}" if reached else "http://PROXY:PORT"
        return _PAGE.format(fingerprint=self.fingerprint, proxy=html.escape(proxy)).encode()
