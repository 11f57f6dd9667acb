"""The Ray actor that runs one worker for :class:`sampler.RaySampler`.

It speaks the replies of :mod:`sampler._worker_process` but is driven by
method calls instead of a command pipe::

    ready()  -> READY(env_spaces, pid) | ERROR(...)   once, after building
    start(round, version, env, agent, quota, chunk, share)
             -> None | ERROR(...)                      applies updates
    sample() -> EPISODES(round, version, batch | None) | ERROR(...)
    shutdown()                                         closes the envs

``sample`` runs whole episodes until it holds ``chunk`` transitions, its
``share`` of the call, the episode ``quota`` of the round, or
FLUSH_AFTER_S of work, and returns them as one batch; ``None`` instead of
a batch means the round's quota was already met. A Ray actor runs its
calls one at a time in the order they were sent, so a ``start`` queued
behind ``sample`` calls takes effect after them: updates land between
episodes, never inside one.

Exceptions from env or agent code are returned as ERROR replies (with the
call that raised and the traceback text), never raised: the caller then
says which worker failed and where, as with the other backends.
"""

import os
import time

import cloudpickle

from sampler._worker_process import FLUSH_AFTER_S, Reply, error_reply
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
        self._number = worker_number
        self._worker = None
        self._failure = None
        self._running = False
        self._round = self._version = 0
        self._quota = self._chunk = self._share = None
        self._produced = self._produced_transitions = 0
        try:
            self._worker = cloudpickle.loads(factory_blob)(worker_number)
            for kind, blob in zip(kinds, blobs):
                self._apply(kind, blob)
        except Exception:
            self._failure = error_reply(self._worker)

    def ready(self):
        if self._failure is not None:
            return self._failure
        return (Reply.READY, self._worker.env_spaces, os.getpid())

    def start(self, round_number, version, env_blob, agent_blob, quota,
              chunk, share):
        self._running = False
        try:
            if env_blob is not None:
                self._apply('env', env_blob)
            if agent_blob is not None:
                self._apply('agent', agent_blob)
            self._worker.start_round(round_number, version)
        except Exception:
            return error_reply(self._worker)
        self._round, self._version = round_number, version
        self._quota, self._chunk, self._share = quota, chunk, share
        self._produced = self._produced_transitions = 0
        self._running = True
        return None

    def sample(self):
        if not self._running:
            return (Reply.EPISODES, self._round, self._version, None)
        buffer = EpisodeBuffer()
        started = time.monotonic()
        try:
            while True:
                episodes, transitions = buffer.n_episodes, buffer.transitions
                self._worker.rollout_into(buffer)
                self._produced += buffer.n_episodes - episodes
                self._produced_transitions += \
                    buffer.transitions - transitions
                if self._quota is not None and \
                        self._produced >= self._quota:
                    self._running = False
                    break
                if self._enough(buffer, started):
                    break
            self._worker.error_site = 'building the message'
            batch = buffer.to_batch()
            self._worker.error_site = None
        except Exception:
            self._running = False
            return error_reply(self._worker)
        return (Reply.EPISODES, self._round, self._version, batch)

    def _enough(self, buffer, started):
        if self._share is not None and \
                self._produced_transitions >= self._share:
            return True
        if self._chunk is not None and buffer.transitions >= self._chunk:
            return True
        return time.monotonic() - started >= FLUSH_AFTER_S

    def shutdown(self):
        if self._worker is not None:
            self._worker.shutdown()
            self._worker = None

    def _apply(self, kind, blob):
        update = cloudpickle.loads(blob)
        if kind == 'env':
            self._worker.update_env(update)
        else:
            self._worker.update_agent(update)
