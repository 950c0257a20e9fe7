"""interceptor: an HTTP/TLS intercepting forward proxy built on Twisted."""

__version__ = "0.1.0"
