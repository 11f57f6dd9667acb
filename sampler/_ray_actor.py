"""The Ray actor that runs one worker for :class:`sampler.RaySampler`.

It speaks the replies of :mod:`sampler._worker_process` but is driven by
method calls instead of a command pipe::

    ready()  -> READY(env_spaces, pid) | ERROR(...)   once, after building
    start(RoundStart, env, agent)
             -> None | EPISODES(...) | ERROR(...)      applies updates; a
                                                       round still running
                                                       ends first, and its
                                                       leftovers come back
    sample() -> EPISODES(Segments) | ERROR(...)
    finish(round) -> None                              see FINISH
    update(version, env, agent) -> None | ERROR(...)   see UPDATE
    stop()   -> EPISODES(Segments, done) | ERROR(...)  ends a stream
    shutdown()                                         closes the envs
    where()  -> str | None                             what the round's
                                                       thread is doing (in
                                                       a concurrency group
                                                       of its own)

``sample`` runs the round (:class:`~sampler._worker_process.Round`) until
a message is due or the worker's part is done, and returns what it
produced (``Segments.done`` says the part is over; ``batch`` is None if
nothing new). A Ray actor runs its calls one at a time in the order they
were sent, so a ``start`` or ``finish`` queued behind ``sample`` calls
takes effect after them: updates land between episodes, never inside one.

Exceptions from env or agent code are returned as ERROR replies (with the
call that raised and the traceback text), never raised: the caller then
says which worker failed and where, as with the other backends.
"""

import os
import threading

from sampler import _probe
from sampler._worker_process import Reply, Round, build_worker, error_reply
from workers import EpisodeBuffer


class SamplerWorker:
    """One worker, built inside its Ray actor from the WorkerFactory.

    Args:
        worker_number: which worker this is.
        factory_blob: the cloudpickled WorkerFactory.
        setup: a :class:`~sampler._worker_process.ProcessSetup`.
        kinds: the kind of each payload that follows (``'env'``,
            ``'agent'`` or ``'params'``), applied in order before READY.
        *blobs: the pickled payloads (Ray resolves object refs given as
            arguments, so each can be put in the object store once).
    """

    def __init__(self, worker_number, factory_blob, setup, kinds, *blobs):
        self._worker = None
        self._progress = None
        self._failure = None
        self._thread = threading.get_ident()
        try:
            self._worker = build_worker(worker_number, factory_blob, setup,
                                        list(zip(kinds, blobs)))
            self._progress = Round(self._worker)
        except Exception:
            self._failure = error_reply(self._worker)

    def ready(self):
        if self._failure is not None:
            return self._failure
        return (Reply.READY, self._worker.env_spaces, os.getpid())

    def start(self, start, env_blob, agent_blob):
        """Begin a round; a round still running ends first, and what it
        leaves (a steps round's running segments, cut) is the reply, for
        the caller to keep or discard; None if it leaves nothing."""
        reply = None
        try:
            if self._progress.running:
                buffer = EpisodeBuffer()
                self._progress.halt(buffer)
                if buffer.n_episodes:
                    reply = self._progress.message(buffer)
            self._progress.start(start, env_blob, agent_blob)
        except Exception:
            return error_reply(self._worker)
        return reply

    def sample(self):
        self._thread = threading.get_ident()
        return self._progress.produce()

    def where(self):
        """What the thread that runs the round is doing now (see
        :mod:`sampler._probe`); called in a concurrency group of its own,
        so that it runs while ``sample`` does."""
        return _probe.where_thread(self._thread)

    def update(self, version, env_blob, agent_blob):
        try:
            self._progress.update(version, env_blob, agent_blob)
        except Exception:
            return error_reply(self._worker)
        return None

    def stop(self):
        """End the round (a stream's): the reply says done."""
        buffer = EpisodeBuffer()
        try:
            self._progress.halt(buffer)
            self._progress.stop()
            return self._progress.message(buffer)
        except Exception:
            return error_reply(self._worker)

    def finish(self, round_number):
        if self._progress.running and round_number == self._progress.round:
            self._progress.finish()

    def shutdown(self):
        if self._worker is not None:
            self._worker.shutdown()
            self._worker = None
