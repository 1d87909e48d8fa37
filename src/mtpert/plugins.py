"""Plugins: what installed packages add to mtpert's registries through entry points.

A package declares, in its ``pyproject.toml``::

    [project.entry-points."mtpert.metrics"]
    my_metric = "my_package.metrics:my_metric"

as pytest and napari find their plugins. A registry reads its group the first time it is looked
into, not when mtpert is imported, so ``import mtpert`` stays fast and a broken plugin cannot
break it: a plugin that fails to load or to register is skipped with a :class:`PluginWarning`
naming it, its package and the error (a plugin calling ``sys.exit`` included: it must not end
the command that happened to load it). :class:`PluginRegistry` is such a registry, read like a
dict; the model and metric registries are its two kinds.

mtpert's own classes are declared in its registries by ``"module:qualname"`` path, not imported:
:func:`import_class` imports one when it is used, :func:`class_description` reads its docstring
from the module's source without running it, so that listing them (``mtpert models``) imports
neither the models nor torch.
"""

from __future__ import annotations

import ast
import re
import threading
import warnings
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import cache
from importlib import import_module
from importlib.abc import InspectLoader
from importlib.metadata import EntryPoint, entry_points
from importlib.util import find_spec
from typing import Any, ClassVar, TypeVar

from mtpert.errors import ConfigError

T = TypeVar("T")


class PluginWarning(UserWarning):
    """An installed plugin could not be loaded or registered, so it was skipped."""


class EntryPointPlugins:
    """The plugins of entry-point group ``group``, handed to ``register`` once, on first use.

    Args:
        group: the entry-point group, e.g. ``"mtpert.metrics"``.
        kind: what the plugins add (``"metric"``, ``"model"``), for the warning.
        register: ``(entry-point name, loaded object) -> None``; registers it, raising when the
            object is not something the registry takes (the plugin is then skipped).
    """

    def __init__(self, group: str, kind: str, register: Callable[[str, Any], None]) -> None:
        self.group = group
        self.kind = kind
        self._register = register
        self._loaded = False
        self._lock = threading.RLock()  # one thread loads; a plugin may read or register (reentry)

    def load(self) -> None:
        """Register every plugin of the group, the first time only; a broken one warns."""
        with self._lock:
            if self._loaded:
                return
            self._loaded = True  # first: a plugin that reads the registry sees it as it is
            for point in entry_points(group=self.group):
                try:  # a broken plugin must not break mtpert, nor end it by calling sys.exit
                    self._register(point.name, point.load())
                except (Exception, SystemExit) as error:  # noqa: BLE001
                    failure = (
                        f"it called sys.exit({error.code!r})"
                        if isinstance(error, SystemExit)
                        else f"{type(error).__name__}: {error}"
                    )
                    warnings.warn(
                        f"Skipped the {self.kind} plugin '{point.name}' = '{point.value}' "
                        f"{_provider(point)}: {failure}. "
                        "Fix or uninstall that package to silence this warning.",
                        PluginWarning,
                        stacklevel=4,
                    )


class PluginRegistry(Mapping[str, T]):
    """Entries by name, read like a dict: those given, those added with the subclass's
    ``register`` (through :meth:`_add`), and those of the plugins of entry-point group ``group``
    (loaded the first time the registry is read; a broken plugin is skipped with a warning).

    Names are only ever added, never given to another entry, so a name means one thing for the
    whole session; the same entry again (equal :meth:`_identity`, e.g. a notebook cell run twice)
    replaces the old one. Subclasses say what an entry is (:meth:`_identity`, :meth:`_describe`)
    and how a plugin's loaded object is registered (:meth:`_register_plugin`).
    """

    kind: ClassVar[str]
    """What the entries are, for messages: ``"model"``, ``"metric"``."""

    def __init__(self, entries: Iterable[tuple[str, T]], group: str) -> None:
        self._entries = dict(entries)
        self._plugins = EntryPointPlugins(group, self.kind, self._register_plugin)

    def check_name(self, name: object, typed_in: str) -> None:
        """Refuse (:class:`ConfigError`) a ``name`` unusable as an entry's name: anything but
        letters, digits, ``_``, ``.`` and ``-`` (it is typed in ``typed_in``)."""
        if not isinstance(name, str) or not re.fullmatch(r"[\w.-]+", name):
            raise ConfigError(
                f"{self.kind.capitalize()} name {name!r} cannot be used: give letters, digits, '_', '.' "
                f"or '-' (it is typed in {typed_in})."
            )

    def _add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name``; refuse a name taken by another entry."""
        self._plugins.load()  # a plugin's name is taken whether it loaded before or after
        taken = self._entries.get(name)
        if taken is not None and self._identity(taken) != self._identity(entry):
            raise ConfigError(
                f"The {self.kind} name '{name}' is already registered as {self._describe(taken)}; "
                f"register {self._describe(entry)} under another name."
            )
        self._entries[name] = entry
        return entry

    @abstractmethod
    def _register_plugin(self, name: str, loaded: object) -> None:
        """Register what plugin ``name`` loaded, or raise (the plugin is then skipped)."""

    @staticmethod
    @abstractmethod
    def _identity(entry: T) -> object:
        """What makes two registrations of a name the same entry."""

    @staticmethod
    @abstractmethod
    def _describe(entry: T) -> str:
        """``entry`` in words, for error messages."""

    def __getitem__(self, name: str) -> T:
        self._plugins.load()
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        self._plugins.load()
        return iter(tuple(self._entries))  # a snapshot: a registration while iterating is no error

    def __len__(self) -> int:
        self._plugins.load()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(self)})"


def first_line(text: str | None) -> str:
    """The first non-empty line of a docstring (``""`` for none): an entry's one-line description."""
    return next(iter((text or "").strip().splitlines()), "")


def class_path(cls: type | str) -> str:
    """``"module:qualname"`` of class ``cls``, given as the class or as that path already."""
    return cls if isinstance(cls, str) else f"{cls.__module__}:{cls.__qualname__}"


def class_name(cls: type | str) -> str:
    """The name of class ``cls`` (given as the class or its path), importing nothing."""
    return class_path(cls).partition(":")[2].rpartition(".")[2]


def import_class(cls: type | str) -> type:
    """Class ``cls`` itself, imported first where it is given by its ``"module:qualname"`` path."""
    if not isinstance(cls, str):
        return cls
    module, _, qualname = cls.partition(":")
    found: Any = import_module(module)
    for name in qualname.split("."):
        found = getattr(found, name)
    return found


def class_description(cls: type | str) -> str:
    """The first line of class ``cls``'s docstring (:func:`first_line`). A class given by its
    path is not imported for it: the docstring is read from its module's source, parsed and not
    run; only where that source is not at hand, or the class is not a ``class`` statement in it,
    is the class imported."""
    if isinstance(cls, str):
        module, _, qualname = cls.partition(":")
        found = _class_docstrings(module).get(qualname)
        if found is not None:
            return first_line(found)
    return first_line(import_class(cls).__doc__)


@cache
def _class_docstrings(module: str) -> dict[str, str]:
    """The docstrings of the classes that module ``module``'s source defines, by qualname (``""``
    for a class without one); none where the source cannot be found. Nothing is imported but the
    module's parent packages, which :func:`importlib.util.find_spec` needs."""
    loader = getattr(find_spec(module), "loader", None)
    source = loader.get_source(module) if isinstance(loader, InspectLoader) else None
    if source is None:
        return {}
    found: dict[str, str] = {}
    pending: list[tuple[str, ast.AST]] = [("", ast.parse(source))]
    while pending:
        prefix, node = pending.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                qualname = prefix + child.name
                found[qualname] = ast.get_docstring(child, clean=False) or ""
                pending.append((qualname + ".", child))
    return found


def _provider(point: EntryPoint) -> str:
    """Which installed package declares ``point``, as words for a message."""
    dist = getattr(point, "dist", None)
    return f"(from package {dist.name} {dist.version})" if dist is not None else "(package unknown)"


class ClassPluginRegistry(PluginRegistry[T]):
    """A :class:`PluginRegistry` of classes registered by name: a plugin's entry point names a
    subclass of :attr:`plugin_class` (registered under the entry point's name with the subclass's
    ``register(name, cls)``) or a function that registers its own (:attr:`plugin_function`)."""

    plugin_class: ClassVar[str]
    """The class a plugin's classes derive from, for messages: ``"PerturbationModel"``."""
    plugin_function: ClassVar[str]
    """The function a plugin's own registering function calls, for messages."""

    @abstractmethod
    def register(self, name: str, cls: Any, /) -> object:
        """Add class ``cls`` under ``name``."""

    def _register_plugin(self, name: str, loaded: object) -> None:
        if isinstance(loaded, type):
            self.register(name, loaded)
        elif callable(loaded):
            loaded()
        else:
            raise TypeError(
                f"the entry point must name a {self.plugin_class} subclass or a function that calls "
                f"{self.plugin_function}, not a {type(loaded).__name__}"
            )
