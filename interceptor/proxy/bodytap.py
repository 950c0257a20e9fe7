"""A copy of the first bytes of a body that streams, taken as it passes (for capture).

The proxy never holds a streamed body: each piece goes on as it arrives. A tap keeps
references to those pieces until it has `limit` bytes (the last one sliced), so what a flow
store records costs at most `limit` bytes a message and changes neither the streaming nor the
backpressure of the exchange.
"""

from __future__ import annotations


class BodyTap:
    """The first `limit` bytes of one message's body, as it was sent on."""

    __slots__ = ("limit", "kept", "cut", "_pieces")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.kept = 0
        self.cut = False  # bytes went past that were not kept
        self._pieces: list[bytes] = []

    def keep(self, data: bytes) -> None:
        """A piece of the body went on: keep what fits under the limit."""
        room = self.limit - self.kept
        if len(data) > room:
            self.cut = True
            if room <= 0:
                return
            data = data[:room]
        self._pieces.append(data)
        self.kept += len(data)

    def content(self) -> bytes:
        """What was kept, in one piece (the piece itself when there was one: no copy)."""
        pieces = self._pieces
        if len(pieces) != 1:
            pieces[:] = [b"".join(pieces)]
        return pieces[0]
