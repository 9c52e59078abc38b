"""xqueue's PanDA scheduler, a distribution of its own: ``pip install xqueue-panda``.

It registers ``scheduler="panda"`` through the ``xqueue.schedulers`` entry point, as any
third-party scheduler does, and uses only xqueue's public API. Importing it does not
import ``pandaclient.Client``: the client reads its server's address from the
environment when first imported, so that waits until a PanDA run opens.
"""

from __future__ import annotations

from .scheduler import PandaOptions, PandaScheduler

__all__ = ["PandaOptions", "PandaScheduler"]
