"""The start-up error of the TLS modules, and the file read that raises it.

The lowest floor of :mod:`interceptor.tls`: :mod:`.ca` and :mod:`.origin` both read files
the user pointed us at (the CA, the extra CA bundle) and must refuse them in the same words.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["TLSSetupError", "read_file"]


class TLSSetupError(Exception):
    """A TLS configuration problem found at start-up.

    The message is one line naming the file and the problem, e.g.
    ``/x/ca.key: private key does not match certificate /x/ca.pem``, fit for printing as the
    reason ``twistd`` refuses to start.
    """


def read_file(path: Path, what: str) -> bytes:
    """The bytes of *path*; *what* (e.g. ``"private key"``) names it in the error.

    :raises TLSSetupError: if the file cannot be read.
    """
    try:
        return path.read_bytes()
    except OSError as e:
        raise TLSSetupError(f"{path}: cannot read {what}: {e.strerror or e}") from None
