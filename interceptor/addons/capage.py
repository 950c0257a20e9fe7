"""The CA page: `http://interceptor.ca/` through the proxy serves the CA certificate to trust.

An addon on the requestheaders hook (it needs no body, so it makes none be buffered): requests for
the configured host are answered locally, so the page works in any browser already pointed at
the proxy, before the user trusts anything.
"""

from __future__ import annotations

import html

from ..http import HTTPFlow, Response

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>interceptor CA certificate</title></head>
<body>
<h1>interceptor CA certificate</h1>
<p>To let interceptor see your HTTPS traffic, trust this certificate authority once.</p>
<ul>
<li><a href="/ca.pem">ca.pem</a> (PEM: Linux, macOS, Firefox, curl <code>--cacert</code>)</li>
<li><a href="/ca.der">ca.der</a> (DER: Windows, Android)</li>
</ul>
<h2>How to install</h2>
<ul>
<li>curl: <code>curl -x http://PROXY --cacert ca.pem https://example.com/</code></li>
<li>Debian/Ubuntu: copy to <code>/usr/local/share/ca-certificates/interceptor.crt</code>,
 run <code>update-ca-certificates</code></li>
<li>macOS: open ca.pem in Keychain Access, set "Always Trust"</li>
<li>Firefox: Settings, Certificates, View Certificates, Authorities, Import</li>
<li>Windows: open ca.der, Install Certificate, "Trusted Root Certification Authorities"</li>
</ul>
<p>On disk: <code>{path}</code></p>
</body></html>
"""


class CAPage:
    """Addon answering requests for `host` with the CA page and certificate downloads."""

    def __init__(self, host: str, cert_pem: bytes, cert_der: bytes, cert_path: str) -> None:
        self.host = host.lower()
        self._files = {
            b"/": (b"text/html; charset=utf-8", _PAGE.format(path=html.escape(cert_path)).encode()),
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
        found = self._files.get(path)
        if found is None:
            flow.response = Response.make(
                404, b"not found: try /ca.pem\n", {"Content-Type": "text/plain; charset=utf-8"}
            )
        else:
            flow.response = Response.make(200, found[1], {"Content-Type": found[0]})
