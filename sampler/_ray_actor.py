"""The Ray actor that hosts one worker's :class:`~sampler._round.Round`
for :class:`sampler.RaySampler`.

It speaks the messages of :mod:`sampler._protocol`, carried by method
calls instead of pipes; every method returns a list of replies::

    ready()                   -> [Ready] | [Failed]      once, after building
    rebuild(factory, setup, *updates)
                              -> [Ready] | [Failed]      build the worker anew
                                                         (a replacement placed
                                                         after updates)
    command(message, env, agent)
                              -> replies due now         Start, Finish, Stop,
                                                         Push (their updates
                                                         as separate arguments:
                                                         object refs that Ray
                                                         resolves)
    sample()                  -> [Segments] | [Failed]   run the round until a
                                                         message is due
    where()                   -> str | None              what the round's
                                                         thread is doing (in a
                                                         concurrency group of
                                                         its own)
    pulse()                   -> (beats, env, idle)      the worker's pulse
                                                         (workers.Worker), for
                                                         step_timeout (same
                                                         group)
    hang_report()             -> (call, stack) | None    where the round's
                                                         thread is, as a
                                                         traceback (same
                                                         group)
    shutdown()                                           closes the envs

A Ray actor runs its calls one at a time in the order they were sent, so
a command queued behind ``sample`` calls takes effect after them: updates
land between episodes, never inside one. Exceptions from env or agent
code come back as Failed replies, never raised.
"""

import os
import threading

from sampler import _probe
from sampler._protocol import Ready
from sampler._round import Round, build_worker, failed_reply
from workers.worker import PULSE_IDLE


class SamplerWorker:
    """One worker, built inside its Ray actor from the WorkerFactory.

    Args:
        worker_number: which worker this is.
        factory_blob: the cloudpickled WorkerFactory.
        setup: a :class:`~sampler._process_setup.ProcessSetup`.
        *updates: the :class:`~sampler._protocol.Update` objects to apply
            in order before Ready (Ray resolves object refs given as
            arguments, so each can be put in the object store once).
    """

    def __init__(self, worker_number, factory_blob, setup, *updates):
        self._number = worker_number
        self._worker = None
        self._round = None
        self._failure = None
        self._thread = threading.get_ident()
        self._build(factory_blob, setup, updates)

    def _build(self, factory_blob, setup, updates):
        try:
            self._worker = build_worker(self._number, factory_blob, setup,
                                        updates)
            self._round = Round(self._worker)
            self._worker.pulse[PULSE_IDLE] = 1  # until its first call
        except Exception:
            self._failure = failed_reply(self._worker)

    def rebuild(self, factory_blob, setup, *updates):
        """Build the worker anew from these updates (a replacement Ray
        placed after updates it missed); returns what ``ready`` does."""
        if self._worker is not None:
            try:
                self._worker.shutdown()
            except Exception:
                pass  # its env goes anyway; the new one is what counts
        self._worker = self._round = self._failure = None
        self._build(factory_blob, setup, updates)
        return self.ready()

    def ready(self):
        if self._failure is not None:
            return [self._failure]
        return [Ready(self._worker.env_spaces, os.getpid())]

    def command(self, message, env=None, agent=None):
        if env is not None or agent is not None:
            message = message._replace(env=env, agent=agent)
        self._thread = threading.get_ident()
        pulse = self._worker.pulse
        pulse[PULSE_IDLE] = 0
        try:
            return self._round.handle(message)
        finally:
            pulse[PULSE_IDLE] = 1  # between calls: waiting, not hung

    def sample(self):
        self._thread = threading.get_ident()
        pulse = self._worker.pulse
        pulse[PULSE_IDLE] = 0
        try:
            return [self._round.produce()]
        finally:
            pulse[PULSE_IDLE] = 1

    def pulse(self):
        """The worker's pulse (see ``workers.Worker.pulse``)."""
        if self._worker is None:
            return None
        return tuple(self._worker.pulse)

    def hang_report(self):
        """``(call, stack)`` of the thread that runs the round (see
        ``sampler._probe.report_frames``), or None."""
        frames = _probe.thread_frames(self._thread)
        return None if frames is None else _probe.report_frames(frames)

    def where(self):
        """What the thread that runs the round is doing now (see
        :mod:`sampler._probe`); called in a concurrency group of its own,
        so that it runs while ``sample`` does."""
        return _probe.where_thread(self._thread)

    def shutdown(self):
        if self._worker is not None:
            self._worker.shutdown()
            self._worker = None
