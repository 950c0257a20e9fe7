"""Loading addons: script files (`[hooks] scripts`, mitmproxy's `-s`) and importable
references (`[hooks] addons`), then their `load(loader)` hook.

Everything that can go wrong here is the user's input: each failure is an AddonError whose
message is one line naming the key and the addon, and start-up exits 2 on it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from ..addonmanager import Loader, OptionsNotSupported
from .chain import EVENTS, addon_name


class AddonError(Exception):
    """An addon that cannot be loaded; the message is one line naming it."""


def _cause(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".splitlines()[0]
    if isinstance(e, ModuleNotFoundError) and e.name and e.name.split(".")[0] == "mitmproxy":
        text += " (change `mitmproxy` to `interceptor` in its import lines)"
    return text


def _is_addon(obj: Any) -> bool:
    return any(callable(getattr(obj, event, None)) for event in EVENTS)


def load_script(path: str, index: int = 0) -> list[Any]:
    """The addons of one script file: its `addons` list if it has one, else the module."""
    stem = Path(path).stem
    # A name of its own per script: two scripts called addon.py must not replace each other.
    module_name = f"__interceptor_script_{index}_{stem.replace('-', '_')}"
    try:
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ImportError("not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    except BaseException as e:
        sys.modules.pop(module_name, None)
        if isinstance(e, KeyboardInterrupt):
            raise
        raise AddonError(f"hooks.scripts: cannot load {path!r}: {_cause(e)}") from None
    found = getattr(module, "addons", None)
    addons: list[Any] = list(found) if isinstance(found, list | tuple) else [module]
    if not any(_is_addon(a) for a in addons):
        raise AddonError(f"hooks.scripts: {path!r} defines no hooks: not an addon")
    for addon in addons:
        if isinstance(addon, ModuleType) and addon is module:
            # mitmproxy names a script's module after its file; so do logs and metrics here.
            module.name = stem  # type: ignore[attr-defined]
    return addons


def load_addons(refs: Sequence[str]) -> list[Any]:
    """Import each 'module:name'; a class (or other callable type) is instantiated with no args."""
    addons = []
    for ref in refs:
        module_name, _, attr = ref.partition(":")
        try:
            obj = getattr(importlib.import_module(module_name), attr)
        except Exception as e:  # ImportError, AttributeError, or the module's own failure
            raise AddonError(f"hooks.addons: cannot load {ref!r}: {_cause(e)}") from None
        if isinstance(obj, type):
            try:
                obj = obj()
            except Exception as e:
                raise AddonError(f"hooks.addons: {ref!r} failed to start: {_cause(e)}") from None
        if not _is_addon(obj):
            raise AddonError(f"hooks.addons: {ref!r} has no hooks: not an addon")
        addons.append(obj)
    return addons


def load_all(scripts: Sequence[str], refs: Sequence[str]) -> list[Any]:
    """Scripts first, then references, each addon's `load(loader)` run once, in order."""
    loaded: list[tuple[str, Any]] = []
    for index, path in enumerate(scripts):
        loaded += [("hooks.scripts", a) for a in load_script(path, index)]
    loaded += [("hooks.addons", a) for a in load_addons(refs)]
    for key, addon in loaded:
        load = getattr(addon, "load", None)
        if not callable(load):
            continue
        name = addon_name(addon)
        try:
            load(Loader(name))
        except OptionsNotSupported as e:
            raise AddonError(f"{key}: {e}") from None
        except Exception as e:
            raise AddonError(f"{key}: addon {name} failed in load: {_cause(e)}") from None
    return [addon for _, addon in loaded]
