"""`load(loader)`'s argument, as mitmproxy's addons expect it (`interceptor.addonmanager.Loader`).

Options are not supported: settings live in the TOML file, and an addon that declares one stops
start-up with one line saying so, rather than running on a default nobody chose.
"""

from __future__ import annotations

from typing import Any


class OptionsNotSupported(Exception):
    """An addon called `loader.add_option`."""


class Loader:
    """What an addon's `load` hook receives."""

    def __init__(self, addon_name: str) -> None:
        self.addon_name = addon_name

    def add_option(
        self,
        name: str,
        typespec: Any,
        default: Any,
        help: str,
        choices: Any = None,
    ) -> None:
        """Refused: interceptor has no addon options (put settings in the addon's own file)."""
        raise OptionsNotSupported(
            f"addon {self.addon_name} declares option {name!r}: addon options are not "
            "supported (see the README's Addons section)"
        )

    def add_command(self, path: str, func: Any) -> None:
        """Refused: interceptor has no command palette."""
        raise OptionsNotSupported(
            f"addon {self.addon_name} declares command {path!r}: commands are not supported"
        )
