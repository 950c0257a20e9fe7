"""mitmproxy's extra log level, for addons that `import interceptor.log` (`log.ALERT`).

Scripts log through Python's `logging`; records at INFO and up (ALERT included) reach the
proxy's log, text or JSON, named after the addon.
"""

from __future__ import annotations

import logging

ALERT = logging.INFO + 1
logging.addLevelName(ALERT, "ALERT")

__all__ = ["ALERT"]
