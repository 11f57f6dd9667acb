"""What a worker's process is, before and around its worker: its name,
its set-up (threads, CPU pin, the user's ``worker_init``), and its ending
when the caller is gone or when it re-imports a main module that builds a
sampler. The process backends use it; :mod:`sampler._round` builds the
worker after it (see :mod:`sampler._protocol` for the whole call).
"""

import dataclasses
import os
import select
import sys
import threading
import time
from typing import Optional

#: A worker process's name; the caller gives it, and the worker knows
#: itself by it before anything else of its is set up.
NAME_PREFIX = 'sampler-worker-'

#: The exit code of a worker whose start re-imported a main module that
#: builds a sampler (see :func:`exit_if_importing_main`); EX_CONFIG of
#: sysexits.h, since the fix is in the user's script.
EXIT_MAIN_NOT_GUARDED = 78


def exit_if_importing_main():
    """End this process at once if it is a worker process still importing
    the user's main module, and that import is building a sampler.

    Worker processes started by ``forkserver`` or ``spawn`` import the main
    module again before they run anything of ours. A script that samples
    without ``if __name__ == "__main__":`` then builds a sampler in every
    worker, which fails there (a worker may not start processes) with a
    traceback per worker that never names the cause. Exiting quietly with
    EXIT_MAIN_NOT_GUARDED lets the caller raise one error that does.
    """
    import multiprocessing
    current = multiprocessing.current_process()
    if getattr(current, '_inheriting', False) and \
            current.name.startswith(NAME_PREFIX):
        os._exit(EXIT_MAIN_NOT_GUARDED)


@dataclasses.dataclass(frozen=True)
class ProcessSetup:
    """What a worker's process does before it builds the worker (sampler
    options ``worker_threads`` and ``worker_init``).

    Attributes:
        threads: threads for torch and for the BLAS / OpenMP pools of the
            process, or None to leave them as they are.
        init: the ``worker_init`` callable (or its pickle), run as
            ``worker_init(worker_number)``, or None.
        caller: the process id of the sampler's process: the worker ends
            within a second of its death (:func:`watch_caller`), or None.
        pin: pin the process to one CPU (:func:`pin_to_cpu`) before the
            worker (and any thread it starts) is built.
    """

    threads: Optional[int] = None
    init: Optional[bytes] = None
    caller: Optional[int] = None
    pin: bool = False


#: The exit code of a worker that ended because its caller died.
EXIT_CALLER_GONE = 70

#: How often the watchdog looks where the caller cannot be waited on.
WATCH_EVERY_S = 0.25


def watch_caller(pid):
    """End this process as soon as process ``pid`` (the caller) is gone,
    whatever the worker is doing: in the middle of an episode, blocked in
    an env, asleep. A daemon thread waits on a pidfd of the caller (Linux
    5.3 and later; elsewhere it looks every WATCH_EVERY_S), then calls
    ``os._exit``. Waiting on the parent process would not do: a worker's
    parent is the forkserver, which outlives the caller while workers
    hold its pipe open."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(EXIT_CALLER_GONE)  # gone before this worker looked
    except (AttributeError, OSError):
        pidfd = None

    def watch():
        if pidfd is not None:
            select.select([pidfd], [], [])  # readable once it has exited
        else:
            while _alive(pid):
                time.sleep(WATCH_EVERY_S)
        os._exit(EXIT_CALLER_GONE)

    threading.Thread(target=watch, name='sampler-watchdog',
                     daemon=True).start()


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # there, but another user's: not reused by a caller
    return True


#: Read by OpenMP, MKL, OpenBLAS, numexpr and Accelerate when they load.
THREAD_VARIABLES = ('OMP_NUM_THREADS', 'MKL_NUM_THREADS',
                    'OPENBLAS_NUM_THREADS', 'NUMEXPR_NUM_THREADS',
                    'VECLIB_MAXIMUM_THREADS')


def limit_threads(n):
    """Run torch and the BLAS / OpenMP pools of this process with ``n``
    threads: the environment variables for libraries loaded later, torch's
    setting if torch is loaded, and ``threadpoolctl`` (when installed) for
    pools already loaded (numpy's BLAS)."""
    for name in THREAD_VARIABLES:
        os.environ[name] = str(n)
    torch = sys.modules.get('torch')
    if torch is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    try:
        import threadpoolctl
    except ImportError:
        return
    threadpoolctl.threadpool_limits(n)


def pin_to_cpu(worker_number):
    """Run this thread, and the threads it starts from now on, on one
    CPU: the ``worker_number``-th of those it may use (modulo their
    count). Returns the CPU, or None where affinity cannot be set."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
        cpu = cpus[worker_number % len(cpus)]
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError):
        return None
    return cpu
