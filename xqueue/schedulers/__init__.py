"""The built-in backends, and the base a batch-system backend is written on.

``BatchScheduler`` (with ``BatchOptions``, ``Submission`` and ``TagStyle``) is public:
see ``xqueue.schedulers.batch`` and the "Writing a scheduler" guide. The backends
themselves are imported only when chosen.
"""

from .batch import BatchOptions, BatchScheduler, Submission, TagStyle

__all__ = ["BatchOptions", "BatchScheduler", "Submission", "TagStyle"]
