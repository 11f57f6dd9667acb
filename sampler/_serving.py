"""How a sampler serves its calls: one call at a time (a call from another
thread is refused, never interleaved), the closed, broken and forked
states and their errors, and the failures that break it. A part of
:class:`~sampler.Sampler`.

Around every call (``_one_call``): a backend's reads of worker messages
run inside its ``_reads_guard`` (Ctrl-C waits for the message being read,
so pipes stay whole); ``close()`` from another thread wakes the call
(``_interrupt_call``), which raises SamplerClosedError; a worker's error
is told which call it ended. In the child of an ``os.fork()``, a sampler
whose workers are processes refuses every call and lets go of them
without a word (``_forked``).
"""

import contextlib
import os
import threading
import weakref

from sampler.errors import (BrokenSamplerError, SamplerClosedError,
                            SamplerError, WorkerCrashedError, WorkerError)


#: Every sampler not yet closed, for what a fork's child must forget.
open_samplers = weakref.WeakSet()


def _forget_samplers_in_child():
    """After ``os.fork()`` (a DataLoader worker, a user's own fork): the
    child's copies of the samplers must never touch the parent's workers,
    neither when it exits nor when it is collected."""
    for sampler in list(open_samplers):
        try:
            sampler._forked()
        except Exception:  # nothing may fail in a fork's child here
            pass


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_forget_samplers_in_child)


class CallGuard:
    """The serving side of :class:`~sampler.Sampler` (a mixin: it uses the
    sampler's state and backend hooks)."""

    @contextlib.contextmanager
    def _one_call(self, what, reads=True):
        """Run the body as the one call this sampler serves: refused while
        a call runs in another thread; after ``close()`` from another
        thread, whatever the call then fails with is SamplerClosedError."""
        self._check_usable()
        me = threading.current_thread()
        with self._lock:
            if self._running is not None:
                other, thread = self._running
                where = 'in this thread' if thread is me else \
                    f'in thread {thread.name!r}'
                msg = (f'{what} was called from thread {me.name!r} while '
                       f'{other} runs {where}: a sampler serves one call at '
                       f'a time, and two would mix their parameters and '
                       f'episodes. Give each thread a sampler of its own, or '
                       f'hold a lock around the calls')
                raise SamplerError(msg)
            self._running = (what, me)
        try:
            with self._reads_guard() if reads else contextlib.nullcontext():
                yield
        except (SamplerClosedError, KeyboardInterrupt):
            raise
        except BaseException as err:
            if isinstance(err, (WorkerError, WorkerCrashedError)):
                err.name_call(what)
            if self._closed:
                msg = (f'the sampler was closed during {what} (close() was '
                       f'called from another thread)')
                raise SamplerClosedError(msg) from err
            raise
        finally:
            with self._lock:
                self._running = None
                self._lock.notify_all()

    def _check_closed_during(self):
        """Raise SamplerClosedError if ``close()`` ran meanwhile (backends
        call it when a wait wakes); never while the workers start."""
        if self._closed and self._serving:
            what = self._running[0] if self._running else 'the call'
            msg = (f'the sampler was closed during {what} (close() was '
                   f'called from another thread)')
            raise SamplerClosedError(msg)

    def _is_fork(self):
        """True in the child of an ``os.fork()`` of the process that made
        this sampler, where its worker processes are not ours."""
        return self._PROCESS_WORKERS and os.getpid() != self._pid

    def _check_usable(self):
        if self._is_fork():
            msg = (f'this sampler belongs to process {self._pid}, and this '
                   f'is process {os.getpid()}, a fork of it (os.fork(), '
                   f'e.g. a DataLoader worker): its workers serve the '
                   f'parent alone. Build a sampler in this process, or '
                   f'sample in the parent')
            raise SamplerError(msg)
        if self._closed:
            msg = ('this sampler is closed; make a new one to sample again')
            raise SamplerClosedError(msg)
        if self._broken is not None:
            msg = f'this sampler is broken since {self._broken}; close it ' \
                'and make a new one'
            if self._options['on_worker_error'] != 'restart':
                msg += ' (or pass on_worker_error="restart" to replace ' \
                    'failed workers)'
            elif self._stats['worker_restarts'] >= \
                    self._options['max_restarts']:
                msg += (f' (its max_restarts='
                        f'{self._options["max_restarts"]} restarts were '
                        f'used up)')
            raise BrokenSamplerError(msg) from self._broken

    def _worker_failed(self, err):
        """Record a worker failure; True if the backend should restart the
        worker (counted here, whether or not the replacement starts),
        otherwise the sampler is broken and the caller re-raises."""
        if self._options['on_worker_error'] == 'restart' and \
                self._stats['worker_restarts'] < self._options['max_restarts']:
            self._stats['worker_restarts'] += 1
            return True
        self._broken = err
        return False
