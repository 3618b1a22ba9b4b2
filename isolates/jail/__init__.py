"""JAIL isolates: native programs (Python, shell, any installed command) in nsjail.

Public surface::

    JailFactory(data_dir, settings=None)   IsolateFactory of runtime "native"
    JailIsolate                            what JailFactory.create() returns
    JailSettings                           per-factory settings and maxima
    reap_stale_jails(data_dir)             start-up cleanup after a crash
    JailError / JailUnavailableError / JailStartError

See docs/jail.md for what the guest sees and how limits apply.
"""

from isolates.jail._errors import JailError, JailStartError, JailUnavailableError
from isolates.jail._factory import RUNTIME, JailFactory
from isolates.jail._isolate import JailIsolate
from isolates.jail._reaper import ReapReport, reap_stale_jails
from isolates.jail._settings import JailSettings

__all__ = [
    "RUNTIME",
    "JailError",
    "JailFactory",
    "JailIsolate",
    "JailSettings",
    "JailStartError",
    "JailUnavailableError",
    "ReapReport",
    "reap_stale_jails",
]
