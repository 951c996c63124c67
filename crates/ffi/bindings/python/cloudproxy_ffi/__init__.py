"""The cloud proxy SDK for Python: the package around the module UniFFI
generates (``cloudproxy_ffi/cloudproxy_ffi.py``, beside the library).

Hand-written, it adds what the generator cannot:

* every engine still alive when the interpreter exits is released by an
  ``atexit`` hook, before finalization: a callback arriving while the
  interpreter finalizes would otherwise end the event thread with a forced
  unwind through the library, and the process would abort;
* ``with CloudProxyEngine(...) as engine:`` releases the engine at the end
  of the block, which is what an app should do.
"""

import atexit
import threading
import weakref

from .cloudproxy_ffi import *  # noqa: F401,F403 (the generated API, re-exported)
from . import cloudproxy_ffi as _generated

_live = weakref.WeakSet()
_live_lock = threading.Lock()


class CloudProxyEngine(_generated.CloudProxyEngine):
    """A cloud proxy engine (the guide's ``RtcEngine``); see the generated
    class. Also a context manager: leaving the ``with`` block releases it."""

    def __init__(self, config, handler):
        super().__init__(config, handler)
        with _live_lock:
            _live.add(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.release()
        return False


@atexit.register
def _release_every_engine():
    """Releases the engines the app did not, while callbacks can still run."""
    with _live_lock:
        engines = list(_live)
    for engine in engines:
        engine.release()
