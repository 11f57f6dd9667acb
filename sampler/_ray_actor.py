"""The Ray actor that runs one worker for :class:`sampler.RaySampler`.

It speaks the replies of :mod:`sampler._worker_process` but is driven by
method calls instead of a command pipe::

    ready()  -> READY(env_spaces, pid) | ERROR(...)   once, after building
    start(RoundStart, env, agent)
             -> None | ERROR(...)                      applies updates
    sample([round, chunk])
             -> EPISODES(round, version, batch | None) | ERROR(...)
    shutdown()                                         closes the envs

``sample`` runs whole episodes until it holds ``chunk`` transitions, its
``share`` of the call, the episode ``quota`` of the round, or
FLUSH_AFTER_S of work, and returns them as one batch; ``None`` instead of
a batch means the round's quota was already met. A ``chunk`` given with
the current round replaces the round's (smaller chunks in a call's tail).
A Ray actor runs its calls one at a time in the order they were sent, so a
``start`` queued behind ``sample`` calls takes effect after them: updates
land between episodes, never inside one.

Exceptions from env or agent code are returned as ERROR replies (with the
call that raised and the traceback text), never raised: the caller then
says which worker failed and where, as with the other backends.
"""

import os
import time

import cloudpickle

from sampler._worker_process import Reply, Round, apply_update, error_reply
from workers import EpisodeBuffer


class SamplerWorker:
    """One worker, built inside its Ray actor from the WorkerFactory.

    Args:
        worker_number: which worker this is.
        factory_blob: the cloudpickled WorkerFactory.
        kinds: the kind of each payload that follows (``'env'``,
            ``'agent'`` or ``'params'``), applied in order before READY.
        *blobs: the pickled payloads (Ray resolves object refs given as
            arguments, so each can be put in the object store once).
    """

    def __init__(self, worker_number, factory_blob, kinds, *blobs):
        self._worker = None
        self._progress = None
        self._failure = None
        try:
            self._worker = cloudpickle.loads(factory_blob)(worker_number)
            for kind, blob in zip(kinds, blobs):
                apply_update(self._worker, kind, blob)
            self._progress = Round(self._worker)
        except Exception:
            self._failure = error_reply(self._worker)

    def ready(self):
        if self._failure is not None:
            return self._failure
        return (Reply.READY, self._worker.env_spaces, os.getpid())

    def start(self, start, env_blob, agent_blob):
        try:
            self._progress.start(start, env_blob, agent_blob)
        except Exception:
            return error_reply(self._worker)
        return None

    def sample(self, round_number=None, chunk=None):
        progress = self._progress
        if chunk is not None and round_number == progress.round:
            progress.chunk = chunk
        if not progress.running:
            return (Reply.EPISODES, progress.round, progress.version, None)
        buffer = EpisodeBuffer()
        started = time.monotonic()
        try:
            while progress.rollout_into(buffer) and \
                    not progress.message_due(buffer, started):
                pass
            self._worker.error_site = 'building the message'
            batch = buffer.to_batch()
            self._worker.error_site = None
        except Exception:
            progress.running = False
            return error_reply(self._worker)
        return (Reply.EPISODES, progress.round, progress.version, batch)

    def shutdown(self):
        if self._worker is not None:
            self._worker.shutdown()
            self._worker = None
