"""The built-in backends, and the base a batch-system backend is written on.

``BatchScheduler`` (with ``BatchOptions``, ``Submission`` and ``TagStyle``) is public:
see ``xqueue.schedulers.batch`` and the "Writing a scheduler" guide. The backends
themselves are imported only when chosen, and so is the base: the core imports helper
modules of this package (``_proc``) while ``xqueue.scheduler``, which the base builds
on, is still being imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .batch import BatchOptions, BatchScheduler, Submission, TagStyle

__all__ = ["BatchOptions", "BatchScheduler", "Submission", "TagStyle"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import batch

        return getattr(batch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
