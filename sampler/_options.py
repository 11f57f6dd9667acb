"""The options of a sampler and the arguments of its calls, checked in
the caller with a message that names the argument, the value and the
fix."""

import numbers

from sampler import _pickling
from sampler._process_setup import ProcessSetup


def check_options(sampler_class, options):
    """``options`` over the defaults of ``sampler_class`` (its
    ``_OPTIONS``), the ones every backend takes checked."""
    known = sampler_class._OPTIONS
    unknown = sorted(set(options) - set(known))
    if unknown:
        msg = (f'{sampler_class.__name__} got unknown option(s) '
               f'{", ".join(unknown)}; its options are '
               f'{", ".join(sorted(known))}')
        raise TypeError(msg)
    merged = {**known, **options}
    if merged['on_worker_error'] not in ('raise', 'restart'):
        msg = (f"on_worker_error must be 'raise' or 'restart', got "
               f"{merged['on_worker_error']!r}")
        raise ValueError(msg)
    restarts = merged['max_restarts']
    if isinstance(restarts, bool) or not isinstance(
            restarts, numbers.Integral) or restarts < 0:
        msg = f'max_restarts must be an int >= 0, got {restarts!r}'
        raise ValueError(msg)
    if merged['progress'] not in (None, True, False):
        msg = (f'progress must be None, True or False, got '
               f'{merged["progress"]!r}')
        raise ValueError(msg)
    threads = merged['worker_threads']
    if threads is not None and (isinstance(threads, bool) or not
                                isinstance(threads, numbers.Integral)
                                or threads < 1):
        msg = (f'worker_threads must be an int >= 1 (threads for torch '
               f'and BLAS in each worker) or None (leave them), got '
               f'{threads!r}')
        raise ValueError(msg)
    step_timeout = merged['step_timeout']
    if step_timeout is not None and (
            isinstance(step_timeout, bool)
            or not isinstance(step_timeout, numbers.Real)
            or not step_timeout > 0):
        msg = (f'step_timeout must be None or a number of seconds > 0 (the '
               f'longest one env or agent call may take), got '
               f'{step_timeout!r}')
        raise ValueError(msg)
    init = merged['worker_init']
    if init is not None and not callable(init):
        msg = (f'worker_init must be a callable taking the worker '
               f'number, got {init!r}')
        raise TypeError(msg)
    return merged


def process_setup(options):
    """The :class:`~sampler._process_setup.ProcessSetup` of every worker
    process (backends whose workers have processes of their own)."""
    init = options['worker_init']
    blob = None
    if init is not None:
        try:
            blob = _pickling.dumps(init)
        except Exception as err:
            msg = (f'worker_init cannot be pickled by cloudpickle, and '
                   f'it must be to reach the workers: '
                   f'{type(err).__name__}: {err}. Pass a function that '
                   f'builds what it needs inside the worker')
            raise TypeError(msg) from err
    return ProcessSetup(threads=options['worker_threads'], init=blob)


def check_streaming_options(options):
    """Refuse bad values of the options every streaming backend takes
    (``Sampler`` checks the options every backend takes)."""
    for name in ('shutdown_timeout', 'startup_timeout'):
        value = options[name]
        if isinstance(value, bool) or not isinstance(
                value, (int, float)) or not value > 0:
            msg = f'{name} must be a number of seconds > 0, got {value!r}'
            raise ValueError(msg)
    staleness = options['max_staleness']
    if isinstance(staleness, bool) or not isinstance(staleness, int) \
            or staleness < 0:
        msg = f'max_staleness must be an int >= 0, got {staleness!r}'
        raise ValueError(msg)


def check_timeout(timeout):
    if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, numbers.Real) or not timeout > 0):
        msg = (f'timeout must be None or a number of seconds > 0, got '
               f'{timeout!r}')
        raise ValueError(msg)


def check_count(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
            or value < 1:
        msg = f'{name} must be an int >= 1, got {value!r}'
        raise ValueError(msg)
    return int(value)
