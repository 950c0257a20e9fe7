"""twistd plugin: `twistd -n interceptor`.

Lazy, so `twistd --help` and plugin discovery never import the proxy itself.
"""

from twisted.application.service import ServiceMaker

interceptor = ServiceMaker(
    "interceptor",
    "interceptor.tap",
    "An HTTP/TLS intercepting forward proxy.",
    "interceptor",
)
