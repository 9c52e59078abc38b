"""Plugin loading and hook calling, on top of pluggy.

Each queue has its own plugin manager, so two queues in one process never share plugin
state. pluggy itself is synchronous, so hooks are not called through ``pm.hook``: the
implementations are walked here in pluggy's order (last registered first), each is
given only the arguments it names, and results that are awaitable are awaited.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from typing import Any

import anyio
import pluggy

from . import hookspecs
from ._suggest import did_you_mean
from .errors import ConfigError, PluginError

hookimpl = pluggy.HookimplMarker("xqueue")
log = logging.getLogger("xqueue")

ENTRY_POINT_GROUP = "xqueue.plugins"
DISABLE_AUTOLOAD_ENV = "XQUEUE_DISABLE_PLUGIN_AUTOLOAD"

_Impl = tuple[str, Callable[..., Any], tuple[str, ...]]
_HOOK_NAMES = [name for name in dir(hookspecs) if name.startswith("on_")]


BUILT_IN_PLUGINS = ("xqueue-control", "xqueue-events")
"""Registered by every queue (``Xqueue``); ``-xqueue-events`` leaves the event stream out."""


def _entry_points() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _never_called(plugin: Any, name: str, callers: Iterable[Any]) -> tuple[str, str, bool] | None:
    """Why a hook of ``plugin`` would never run, and what to do: one that names no xqueue
    hook (a misspelling), or one xqueue calls and awaits without its body ever running
    (pluggy's wrappers, driven around other hooks, which xqueue never does; a generator,
    whose body runs only when iterated). Nothing would say so otherwise. The flag: such a
    hook would still be called, and answer with a generator (a failed check, say)."""
    unknown = None
    for caller in callers:
        for impl in caller.get_hookimpls():
            if impl.plugin is not plugin:
                continue
            if impl.hookwrapper or impl.wrapper:
                how = "as a hook wrapper"
            elif inspect.isgeneratorfunction(impl.function) or inspect.isasyncgenfunction(
                impl.function
            ):
                how = "as a generator"
            else:
                if not caller.has_spec() and not impl.optionalhook and unknown is None:
                    unknown = caller.name
                continue
            why = f"plugin {name!r} implements {caller.name!r} {how}, which xqueue never runs"
            return why, "a hook is a plain function or an async def without yield", True
    if unknown is None:
        return None
    hint = did_you_mean(unknown, _HOOK_NAMES)
    why = f"plugin {name!r} implements {unknown!r}, which is no xqueue hook{hint}"
    return why, "mark a hook of your own with @hookimpl(optionalhook=True)", False


def _has_methods(cls: type) -> bool:
    """Whether a class has a hook implementation (its own or inherited) that would be
    called unbound: a plain function, not a static or class method."""
    for klass in cls.__mro__:
        for value in vars(klass).values():
            if inspect.isfunction(value) and hasattr(value, "xqueue_impl"):
                return True
    return False


class Hooks:
    """The plugins of one queue and a fast, async-aware way to call them."""

    def __init__(
        self, plugins: Iterable[Any] | None = None, *, autoload: bool | None = None
    ) -> None:
        self.pm = pluggy.PluginManager("xqueue")
        self.pm.add_hookspecs(hookspecs)
        if plugins is not None and not isinstance(plugins, Iterable):
            raise ConfigError(f"plugins is a list of plugins, not {plugins!r}")
        plugins = list(plugins or [])
        if None in plugins:  # pluggy's own assert said "name or plugin"
            raise ConfigError(f"plugins lists None: {plugins!r}")
        blocked = {p[1:] for p in plugins if isinstance(p, str) and p.startswith("-")}
        wanted = [p for p in plugins if not (isinstance(p, str) and p.startswith("-"))]
        if autoload is None:
            autoload = not os.environ.get(DISABLE_AUTOLOAD_ENV)
        # A built-in named is on already; one blocked is the queue's to leave out.
        named = [p for p in wanted if isinstance(p, str) and p not in BUILT_IN_PLUGINS]
        eps = _entry_points() if (autoload or named or blocked) else {}
        if "xqueue-control" in blocked:
            raise ConfigError(
                "the built-in plugin 'xqueue-control' cannot be blocked: it records run.json "
                "and takes the kill requests of `xqueue cancel`"
            )
        for name in [*named, *sorted(blocked)]:
            if name not in eps and name not in BUILT_IN_PLUGINS:
                installed = ", ".join(sorted(eps)) or "none"
                raise ConfigError(
                    f"unknown plugin {name!r}; installed plugins: {installed} (built in: "
                    f"{', '.join(BUILT_IN_PLUGINS)})"
                )
        self.blocked = frozenset(blocked)
        if autoload:
            for name, ep in eps.items():
                if name not in blocked and name not in named:
                    try:
                        self._register(_load(ep, name), name, asked=False)
                    except ConfigError as exc:  # installed, not asked for: every queue
                        # of the environment would fail; only this plugin is left out
                        log.warning(
                            "%s; left out (plugins=['-%s'], or `-p no:%s` on the command "
                            "line, says so at once)",
                            exc,
                            name,
                            name,
                        )
        for name in named:
            if name not in blocked:
                self._register(_load(eps[name], name), name)
        for plugin in wanted:
            if not isinstance(plugin, str):
                self._register(plugin, None)
        self._impls: dict[str, list[_Impl]] = {}
        self.hung: set[str] = set()  # plugins that outlived a timeout: skipped from then on

    def _register(self, plugin: Any, name: str | None, *, asked: bool = True) -> None:
        """``asked``: named or given by the caller, so a plugin that implements a hook
        xqueue does not have is refused. One merely installed (loaded automatically) only
        gets a warning: made for a newer xqueue, say, it must not stop every queue."""
        if isinstance(plugin, type) and _has_methods(plugin):
            # Its hooks would be called unbound: a TypeError at the first job, far from here.
            raise ConfigError(
                f"plugin {plugin.__qualname__!r} is a class: give an instance of it "
                f"({plugin.__qualname__}()), whose hooks get their self"
            )
        if self.pm.is_registered(plugin):  # pluggy named it by a name made up here
            label = getattr(plugin, "__name__", None) or type(plugin).__qualname__
            raise ConfigError(
                f"plugin {label!r} is registered already, as {self.pm.get_name(plugin)!r}: "
                "give each plugin once (an installed one is loaded by itself)"
            )
        if name is None:  # a readable name for messages, unique within this queue
            base = getattr(plugin, "__name__", None) or type(plugin).__qualname__
            name, n = base, 1
            while self.pm.has_plugin(name):
                n += 1
                name = f"{base}-{n}"
        try:
            self.pm.register(plugin, name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            label = name or getattr(plugin, "__name__", None) or type(plugin).__name__
            raise ConfigError(f"plugin {label!r} cannot be registered: {exc}") from exc
        callers = self.pm.get_hookcallers(plugin) or []
        if not callers and asked:  # a plugin that would never be called: a mistake
            self.pm.unregister(plugin)
            raise ConfigError(
                f"plugin {name!r} implements no xqueue hook: give an object or module with "
                "functions marked @xqueue.hookimpl"
            )
        problem = _never_called(plugin, name, callers)
        if problem is not None:
            why, fix, harmful = problem
            if not asked and not harmful:
                log.warning("%s; that hook is never called", why)
                return
            self.pm.unregister(plugin)
            if not asked:  # called, it would answer with a generator: left out whole
                log.warning("%s; the plugin is left out (%s)", why, fix)
                return
            raise ConfigError(f"{why} ({fix})")

    def register(self, plugin: Any, name: str | None = None) -> None:
        """Add a plugin after construction (the CLI adds its progress view this way)."""
        self._register(plugin, name)
        self._impls.clear()

    def names(self) -> list[str]:
        return [self.pm.get_name(p) or repr(p) for p in self.pm.get_plugins()]

    def _implementations(self, hook: str) -> list[_Impl]:
        """The implementations to call, in order; a plugin that hung is left out."""
        impls = self._impls.get(hook)
        if impls is None:
            caller = getattr(self.pm.hook, hook)
            impls = [
                (impl.plugin_name, impl.function, tuple(impl.argnames))
                for impl in reversed(caller.get_hookimpls())
                if impl.plugin_name not in self.hung
            ]
            self._impls[hook] = impls
        return impls

    def implements(self, hook: str) -> bool:
        """Whether any plugin implements ``hook`` (so the engine can skip work for none)."""
        return bool(self._implementations(hook))

    async def call(
        self, hook: str, timeout: float | None = None, **kwargs: Any
    ) -> list[tuple[str, Any]]:
        """Call every implementation of ``hook``; return (plugin name, result) pairs.

        ``timeout`` bounds each awaitable implementation (a stopping run must not hang on
        a plugin): one that takes longer is cancelled and reported as a PluginError.
        """
        return await self.call_with(hook, kwargs, timeout)

    async def call_with(
        self, hook: str, kwargs: dict[str, Any], timeout: float | None = None
    ) -> list[tuple[str, Any]]:
        """``call`` with the arguments as one dict, which the engine builds once per job
        event: packing and unpacking keywords twice more per event shows when 100,000
        jobs are fed. A plugin that raises does not keep the others from the call; the
        first error is raised once all were called."""
        results, error = await self._each(hook, self._implementations(hook), kwargs, timeout)
        if error is not None:
            raise error
        return results

    async def _each(
        self, hook: str, impls: Iterable[_Impl], kwargs: dict[str, Any], timeout: float | None
    ) -> tuple[list[tuple[str, Any]], PluginError | None]:
        """Call each implementation, awaiting what it returns; (plugin name, result)
        pairs of those that answered, and the first error (the others are still called)."""
        results = []
        error: PluginError | None = None
        for impl in impls:
            try:
                result = _invoke(hook, impl, kwargs)
                if result is not None and inspect.isawaitable(result):
                    result = await self._settle(hook, impl[0], result, timeout)
            except PluginError as exc:
                error = error or exc
                continue
            results.append((impl[0], result))
        return results, error

    def notify(
        self, hook: str, kwargs: dict[str, Any], timeout: float | None = None
    ) -> Coroutine[Any, Any, None] | None:
        """Call a hook whose results nobody reads (the job events), without a coroutine
        when no implementation returns an awaitable: None then, else a coroutine to
        await that waits for it and calls the rest. The engine calls two of these for
        each job it is fed, and most plugins' hooks are plain functions.

        A plugin that raises does not keep the others from the event (the event stream
        must still record the job killed, the run stopped); the first error is raised
        once all were called, and stops the run."""
        impls = self._impls.get(hook)
        if impls is None:
            impls = self._implementations(hook)
        rest = iter(impls)
        error = None
        for plugin, fn, argnames in rest:
            try:  # ``_invoke``, inline
                if len(argnames) == 1:
                    result = fn(kwargs[argnames[0]])
                else:
                    result = fn(*[kwargs[a] for a in argnames])
            except BaseException as exc:
                if not _plugins_own(exc):
                    raise
                error = error or _plugin_error(plugin, hook, exc)
                continue
            if result is not None and inspect.isawaitable(result):
                return self._notify_rest(hook, plugin, result, rest, kwargs, timeout, error)
        if error is not None:
            raise error
        return None

    async def _notify_rest(
        self,
        hook: str,
        plugin: str,
        pending: Awaitable[Any],
        rest: Iterator[_Impl],
        kwargs: dict[str, Any],
        timeout: float | None,
        error: PluginError | None,
    ) -> None:
        try:
            await self._settle(hook, plugin, pending, timeout)
        except PluginError as exc:
            error = error or exc
        _, later = await self._each(hook, rest, kwargs, timeout)
        error = error or later
        if error is not None:
            raise error

    async def _settle(
        self, hook: str, plugin: str, result: Awaitable[Any], timeout: float | None
    ) -> Any:
        """Await what an implementation returned, bounded by ``timeout``; one that
        outlives it is called no more (its error is reported once, now)."""
        try:
            if timeout is None:
                return await result
            return await _bounded(result, timeout)
        except TimeoutError as exc:
            self.hung.add(plugin)
            self._impls.clear()
            raise PluginError(plugin, hook, exc) from exc
        except BaseException as exc:
            if _plugins_own(exc):
                raise PluginError(plugin, hook, exc) from exc
            raise

    async def vetoed_by(self, hook: str, timeout: float | None = None, **kwargs: Any) -> str | None:
        """Call a veto hook; the name of the first plugin that returned False, else None."""
        for plugin, result in await self.call(hook, timeout, **kwargs):
            if result is False:
                return plugin
        return None


def _load(ep: Any, name: str) -> Any:
    """An entry point's plugin; ConfigError naming it and its distribution if it cannot
    be imported (a missing module, a dependency it lacks, an error in its code)."""
    try:
        return ep.load()
    except (Exception, SystemExit) as exc:  # a module that calls sys.exit() as it loads
        # ended `xqueue run` with its code, without a word; it is one more broken plugin
        dist = getattr(getattr(ep, "dist", None), "name", None)
        where = f" of {dist}" if dist else ""
        raise ConfigError(
            f"plugin {name!r} (entry point {getattr(ep, 'value', '?')!r}{where}) cannot be "
            f"loaded: {type(exc).__name__}: {exc}"
        ) from exc


# What a plugin's hook may raise that stops the run as its error: also sys.exit() and a
# KeyboardInterrupt (Ctrl-C landing in a slow hook), which escaped the engine's handling,
# so its stop was cut short and left the jobs running. They are raised again once the
# run has stopped (``PluginError.reraised``). A cancellation is not a plugin's error,
# unless the hook raised it of its own (``_spontaneous_cancellation``).
_RAISED = (Exception, SystemExit, KeyboardInterrupt)


def _plugin_error(plugin: str, hook: str, exc: BaseException) -> PluginError:
    """``raise PluginError(...) from exc``, as a value: raised once the others ran."""
    error = PluginError(plugin, hook, exc)
    error.__cause__ = exc
    return error


def _invoke(hook: str, impl: _Impl, kwargs: dict[str, Any]) -> Any:
    """One implementation, given only the arguments it names."""
    plugin, fn, argnames = impl
    try:
        if len(argnames) == 1:  # most hooks take only the job: no list to build
            return fn(kwargs[argnames[0]])
        return fn(*[kwargs[a] for a in argnames])
    except BaseException as exc:
        if _plugins_own(exc):
            raise PluginError(plugin, hook, exc) from exc
        raise


def _plugins_own(exc: BaseException) -> bool:
    """Whether what a hook raised is its plugin's error (``_RAISED``, or a cancellation
    it raised itself), which stops the run as a PluginError, not the run's own."""
    return isinstance(exc, _RAISED) or _spontaneous_cancellation(exc)


def _spontaneous_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is a cancellation the hook raised of its own accord (it awaited a
    future someone else cancelled: a closed client's) while nothing cancels the task
    calling it: the plugin's error then. Raised on, it ended the run with a bare
    CancelledError naming no plugin, which the caller's code took for its own
    cancellation. Only asyncio's tasks can tell (``Task.cancelling``, Python 3.11);
    trio's Cancelled cannot be raised by a hook of its own."""
    if not isinstance(exc, anyio.get_cancelled_exc_class()):
        return False
    import asyncio

    try:
        task = asyncio.current_task()
    except RuntimeError:  # not on asyncio
        return False
    cancelling = getattr(task, "cancelling", None)
    return cancelling is not None and cancelling() == 0


async def _bounded(awaitable: Any, timeout: float) -> Any:
    with anyio.move_on_after(timeout) as scope:
        return await awaitable
    if scope.cancelled_caught:
        raise TimeoutError(f"did not return within {timeout:g} s")
