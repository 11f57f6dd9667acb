"""Starting worker processes: the start method, the forkserver and what it
imports before it forks workers, and room for their file descriptors."""

import importlib.util
import multiprocessing as mp
import os
import sys
import warnings
import weakref

from sampler.errors import SamplerError


#: Always imported by the forkserver before it forks workers: the worker
#: loop and, through it, numpy, gymnasium and cloudpickle.
_SERVER_MODULES = ('sampler._worker_process',)

#: What the forkserver this module started imported, or None before that.
_server_preload = None

#: Open samplers whose workers came from the forkserver.
forkserver_samplers = weakref.WeakSet()


def check_preload(preload):
    """The ``preload`` option as a tuple of importable module names; None
    means torch if the caller has imported it."""
    if preload is None:
        return ('torch',) if 'torch' in sys.modules else ()
    if isinstance(preload, str) or not all(
            isinstance(name, str) for name in preload):
        msg = (f'preload must be a list of module names like '
               f'("torch",), got {preload!r}')
        raise TypeError(msg)
    for name in preload:
        if name == '__main__':
            msg = ('preload may not name __main__: name the modules your '
                   'script imports instead, e.g. ("torch",)')
            raise ValueError(msg)
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            msg = (f'preload names {name!r}, which cannot be imported here; '
                   f'install it or fix the name')
            raise ValueError(msg)
    return tuple(preload)


def use_forkserver(ctx, preload):
    """Have ``ctx``'s forkserver import ``preload`` before it forks workers.

    The forkserver is one per process and imports its modules once, when
    it starts. If it is running without some of ``preload`` and no open
    sampler has workers from it, it is stopped so that the next worker
    starts a new one that imports them; with samplers open, a warning
    says the modules will be imported by each worker instead.
    """
    global _server_preload
    from multiprocessing import forkserver
    modules = list(dict.fromkeys(_SERVER_MODULES + preload))
    server = getattr(forkserver, '_forkserver', None)
    running = getattr(server, '_forkserver_pid', None) is not None
    if running and _server_preload is not None and \
            not set(modules) <= set(_server_preload):
        busy = any(not s.closed for s in forkserver_samplers)
        if not busy and hasattr(server, '_stop'):
            server._stop()
            running = False
        elif preload:
            msg = (f'preload={preload!r} cannot take effect: the '
                   f'forkserver is already running for open samplers, '
                   f'without {sorted(set(modules) - set(_server_preload))}; '
                   f'each worker imports them itself')
            warnings.warn(msg, RuntimeWarning, stacklevel=4)
    if not running:
        ctx.set_forkserver_preload(modules)
        _server_preload = modules


#: File descriptors the caller holds per worker (its two pipe ends, the
#: fd and probe sockets and the process sentinel, measured at 5 with the
#: selector's share), with room for the ones a start briefly needs.
FDS_PER_WORKER = 6


def make_room_for_descriptors(n_workers):
    """Before any worker starts: raise this process's soft limit on open
    files (up to the hard limit, as Ray does) if ``n_workers`` need more,
    or say what to do if even the hard limit is too low."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        in_use = len(os.listdir('/proc/self/fd'))
    except (ImportError, OSError):
        return  # not Linux: start, and the system says if it runs out
    need = in_use + FDS_PER_WORKER * n_workers + 16
    if soft == resource.RLIM_INFINITY or need <= soft:
        return
    if hard == resource.RLIM_INFINITY or need <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
        return
    msg = (f'n_workers={n_workers} needs about {need} open files in this '
           f'process ({in_use} are open, {FDS_PER_WORKER} per worker), but '
           f'its limit is {soft} and cannot go above {hard}; raise it '
           f'before starting Python (ulimit -n {need}, or LimitNOFILE= for '
           f'a service) or use fewer workers')
    raise SamplerError(msg)


def default_start_method():
    if 'forkserver' in mp.get_all_start_methods():
        return 'forkserver'
    return 'spawn'
