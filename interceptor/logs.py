"""Log output: text or JSON lines on stdout, written so that stdout can never hurt the proxy.

A closed stdout (the reader went away) must not kill us (EPIPE, and SIGPIPE where it is not
ignored) and a stdout nobody drains must not stall the reactor. So lines are written with one
non-blocking os.write each: a full pipe drops the line (counted), a broken one turns logging off
(counted). A log line is worth less than the traffic it describes.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from datetime import UTC, datetime
from typing import Any

from twisted.logger import (
    ILogObserver,
    Logger,
    LogLevel,
    formatEvent,
    formatEventAsClassicLogText,
)
from zope.interface import implementer


@implementer(ILogObserver)
class StdoutObserver:
    """Writes each event as a text or JSON line to a file descriptor, never blocking or raising."""

    def __init__(self, fmt: str = "text", fd: int = 1, worker: int | None = None) -> None:
        self.fd = fd
        self.json = fmt == "json"
        # A worker process's lines say which worker wrote them (JSON: "worker": N; text: in
        # the bracket, "[interceptor.access#info worker=N]").
        self.worker = worker
        self._tag = f" worker={worker}" if worker is not None else ""
        self.dropped = 0  # lines dropped because the pipe was full
        self.dead = False  # the descriptor is gone: nothing more is written
        self._stamp_second = -1
        self._stamp = ""
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
                # A pipe or socket reader can stall; a file or terminal cannot (in practice).
                os.set_blocking(fd, False)
        except OSError:
            self.dead = True

    def __call__(self, event: dict[str, Any]) -> None:
        if self.dead:
            return
        try:
            if not self.json:
                line = self._text_line(event)
            elif self.worker is None:
                line = json_line(event)
            else:
                line = json_line({**event, "worker": self.worker})
            if not line:
                return
            os.write(self.fd, line.encode("utf-8", "replace"))
        except BlockingIOError:
            self.dropped += 1
        except OSError:
            self.dead = True
        except Exception:
            # A log event that cannot be formatted is not worth a crash either.
            self.dropped += 1

    def _text_line(self, event: dict[str, Any]) -> str | None:
        """twistd's classic line; events that carry a pre-rendered `text` skip the formatter."""
        text = event.get("text")
        if event.get("log_format") != "{text}" or not isinstance(text, str) or "\n" in text:
            if self.worker is not None:
                event = {**event, "log_system": f"{event.get('log_namespace', '-')}{self._tag}"}
            return formatEventAsClassicLogText(event)
        when = event.get("log_time", 0.0)
        second = int(when)
        if second != self._stamp_second:
            self._stamp_second = second
            self._stamp = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")
        level = getattr(event.get("log_level"), "name", "info")
        return f"{self._stamp} [{event.get('log_namespace', '-')}#{level}{self._tag}] {text}\n"


def observe_stdout(parent: Any, fmt: str, worker: int | None = None) -> None:
    """Give twistd's application `parent` our stdout observer: twistd uses an application's
    ILogObserver component instead of its own stdout writer, which is how `[log] format` and
    the never-block/never-die stdout rule take effect."""
    setComponent = getattr(parent, "setComponent", None)
    if setComponent is not None:
        setComponent(ILogObserver, StdoutObserver(fmt, worker=worker))


_LEGACY_KEYS = frozenset({"message", "system", "time", "isError", "format", "why", "failure"})
_SCALARS = (str, int, float, bool, type(None))


def json_line(event: dict[str, Any]) -> str:
    """One flat JSON object: time, level, namespace, text, and the event's own scalar fields.

    Twisted's own eventAsJSON carries its internals (level objects, flattening caches); a log
    shipper wants `status` and `url` as plain keys.
    """
    level = event.get("log_level")
    out: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0.0), UTC).isoformat(),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace", "-"),
        "text": formatEvent(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in _LEGACY_KEYS or key in out:
            continue
        if isinstance(value, _SCALARS):
            out[key] = value
    failure = event.get("log_failure")
    if failure is not None:
        out["traceback"] = failure.getTraceback()
    return json.dumps(out, default=str) + "\n"


class AddonLogBridge(logging.Handler):
    """Python `logging` records of addons (INFO and up, ALERT included) into the proxy's log,
    named after the addon: mitmproxy scripts log with `logging.info(...)`.

    A record is attributed by the file it was logged from (`scripts`: path -> addon name), else
    by its logger's name.
    """

    def __init__(self, scripts: dict[str, str]) -> None:
        super().__init__(logging.INFO)
        self.scripts = scripts
        self._log = Logger(namespace="interceptor.addon")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            name = self.scripts.get(record.pathname) or (
                record.name if record.name != "root" else record.module
            )
            level = _LEVELS.get(record.levelno) or (
                LogLevel.critical if record.levelno > logging.ERROR else LogLevel.info
            )
            text = f"addon {name}: {record.getMessage()}"
            if record.exc_info:
                text += f" ({record.exc_info[0].__name__ if record.exc_info[0] else 'error'})"
            self._log.emit(
                level,
                "{text}",
                text=text.replace("\n", " "),
                addon=name,
                level_name=record.levelname.lower(),
            )
        except Exception:
            self.handleError(record)

    def install(self) -> None:
        """Attach to the root logger (whose default WARNING would hide scripts' INFO)."""
        root = logging.getLogger()
        if self not in root.handlers:
            root.addHandler(self)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)

    def uninstall(self) -> None:
        """Detach from the root logger."""
        logging.getLogger().removeHandler(self)


_LEVELS = {
    logging.DEBUG: LogLevel.debug,
    logging.INFO: LogLevel.info,
    logging.INFO + 1: LogLevel.info,  # mitmproxy's ALERT
    logging.WARNING: LogLevel.warn,
    logging.ERROR: LogLevel.error,
    logging.CRITICAL: LogLevel.critical,
}
