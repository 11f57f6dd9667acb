"""The exceptions a sampler raises in the caller.

::

    SamplerError
     +-- SamplerClosedError      you called it after close()
     +-- BrokenSamplerError      a worker failed earlier; close and rebuild
     +-- WorkerError             env or agent code raised inside a worker
     |    +-- WorkerHungError    or ran longer than step_timeout
     +-- WorkerCrashedError      a worker process died without a word
     +-- SamplerTimeoutError     timeout= ran out (also a TimeoutError)
"""

import signal


class SamplerError(Exception):
    """Base class of every error a sampler raises."""


class SamplerClosedError(SamplerError):
    """The sampler was closed; make a new one."""


class BrokenSamplerError(SamplerError):
    """A worker failed and the sampler cannot go on; its ``__cause__`` is
    the original failure. Close the sampler and make a new one."""


class RemoteTraceback(Exception):
    """Carries a worker's formatted traceback text as an exception, so it
    prints as the ``__cause__`` of the error raised in the caller."""

    def __init__(self, text):
        super().__init__(text)
        self.text = text

    def __str__(self):
        return f'\n\nWorker traceback:\n"""\n{self.text}"""'


class _NamesCall(SamplerError):
    """An error about a worker that says which call it happened in."""

    call = None

    def name_call(self, call):
        """Say which call of the sampler it happened in (once)."""
        if self.call is None:
            self.call = call
        self.args = (self._message(f' during {self.call}' if self.call
                                   else ''),)


class WorkerError(_NamesCall):
    """Env or agent code raised an exception inside a worker.

    Attributes:
        worker_number: the worker that failed.
        site: the call that raised, e.g. ``'env.step'``.
        exc_type: the original exception's type name.
        exc_message: the original exception's message.
        worker_traceback: the traceback text, as the worker saw it.
    """

    def __init__(self, worker_number, site, exc_type, exc_message,
                 worker_traceback, call=None):
        self.worker_number = worker_number
        self.site = site
        self.exc_type = exc_type
        self.exc_message = exc_message
        self.worker_traceback = worker_traceback
        self.call = None
        super().__init__()
        self.name_call(call)

    def _message(self, during):
        where = f' in {self.site}' if self.site else ''
        return (f'worker {self.worker_number} failed{where}{during}: '
                f'{self.exc_type}: {self.exc_message}')

    def __reduce__(self):
        return (type(self), (self.worker_number, self.site, self.exc_type,
                             self.exc_message, self.worker_traceback,
                             self.call))


class WorkerHungError(WorkerError):
    """An env or agent call inside a worker ran longer than the sampler's
    ``step_timeout``: the worker was killed (and, with
    ``on_worker_error="restart"``, replaced). ``worker_traceback`` holds
    the worker's stack at the moment it was found hung, where it could be
    read.

    Besides :class:`WorkerError`'s attributes (``site`` is the call it
    hung in, e.g. ``'env.step'``, or None if its stack could not be
    read), it has these.

    Attributes:
        env_index: the env it was stepping or resetting last, its index
            among the worker's envs (None if unknown).
        env_name: that env in words (``'its env 2'``; a vector env names
            its own index, ``'env 6'``).
        seconds: how long the call had run, at least, when the worker
            was killed.
        step_timeout: the limit it ran past.
    """

    #: What became of the worker, the message's last words.
    KILLED = 'the worker was killed'

    def __init__(self, worker_number, site, env_index, seconds,
                 step_timeout, stack, call=None, env_name=None,
                 outcome=KILLED):
        self.outcome = outcome
        self.env_index = env_index
        self.env_name = env_name if env_name is not None or \
            env_index is None else f'its env {env_index}'
        self.seconds = seconds
        self.step_timeout = step_timeout
        where = 'its stack, at the moment it was found hung' if stack \
            else 'its stack could not be read'
        super().__init__(worker_number, site, 'WorkerHungError', where,
                         stack or '', call)

    def _message(self, during):
        where = f' in {self.site}' if self.site else ''
        env = f' ({self.env_name})' if self.env_name else ''
        return (f'worker {self.worker_number} hung{where}{env}{during}: the '
                f'call ran {self.seconds:.1f} s or more, past step_timeout='
                f'{self.step_timeout} s; {self.outcome}')

    def __reduce__(self):
        return (type(self), (self.worker_number, self.site, self.env_index,
                             self.seconds, self.step_timeout,
                             self.worker_traceback, self.call,
                             self.env_name, self.outcome))


class WorkerCrashedError(_NamesCall):
    """A worker process died without reporting an exception (a signal,
    ``os._exit``, running out of memory).

    Attributes:
        worker_number: the worker that died.
        exitcode: its exit code, negative ``-N`` for signal ``N``.
    """

    def __init__(self, worker_number, exitcode, detail='', call=None):
        self.worker_number = worker_number
        self.exitcode = exitcode
        self.detail = detail
        self.call = None
        super().__init__()
        self.name_call(call)

    def _message(self, during):
        return (f'worker {self.worker_number} died{during}: '
                f'{describe_exitcode(self.exitcode)}{self.detail}')

    def __reduce__(self):
        return (type(self), (self.worker_number, self.exitcode, self.detail,
                             self.call))


class SamplerTimeoutError(SamplerError, TimeoutError):
    """A call's ``timeout`` ran out. The sampler stays usable."""


def describe_exitcode(exitcode):
    """``'killed by signal 9 (SIGKILL)'`` or ``'exit code 3'``."""
    if exitcode is None:
        return 'exit code unknown'
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = 'unknown signal'
        return f'killed by signal {-exitcode} ({name})'
    return f'exit code {exitcode}'
