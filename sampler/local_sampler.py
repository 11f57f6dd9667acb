"""LocalSampler: every worker in the calling process, one after another.

Data flow of one call: the same call core as every backend (see
:mod:`sampler.sampler`), with messages that are plain function calls::

    caller: a Collector for the round (the call's rules)
      |  Round.start(RoundStart, updates) on every worker's Round
      v
    while the collector is not done: the next running worker's
      |  Round.produce() (its round run on until a message is due)
      |  -> EPISODES(Segments) -> collector.add; Round.finish() on
      |  every worker when the collector says
      v
    EpisodeBatch.concatenate(kept) --> caller
"""

import time
import warnings

from sampler._worker_process import (Reply, Round, apply_update,
                                     error_reply, safe_str, safe_traceback)
from sampler.errors import SamplerTimeoutError, WorkerError
from sampler.sampler import Sampler
from workers import EpisodeBuffer


class LocalSampler(Sampler):
    """Runs its workers in the calling process, in turn.

    The simplest backend and the reference for the others: no processes,
    so it suits debugging, tiny envs and tests, and its
    ``obtain_exact_episodes`` batches are the ones every backend must match
    for the same seed. Each worker still gets its own unpickled copy of the
    agent and env, exactly as a worker process would.

    ``timeout`` is checked between episodes: a single ``env.step`` that
    never returns cannot be interrupted in-process (use
    ``MultiprocessingSampler`` for that).

    Args:
        agents: an agent (``get_action(obs) -> (action, info)``, or a
            callable ``obs -> action``), or a list of one per worker.
        envs: a gymnasium env id, a ``gymnasium.Env``, a zero-argument
            constructor or an ``EnvUpdate``, or a list of one per worker.
        worker_factory: a ``WorkerFactory``; if given, leave ``n_workers``,
            ``max_episode_length``, ``seed``, ``worker_class`` and
            ``worker_args`` unset.
        n_workers: number of workers; None means the length of ``agents``
            or ``envs`` if either is a list, else the CPUs this process may
            use.
        max_episode_length: cut episodes after this many steps
            (``truncated=True``); None keeps the env's own limit only.
        seed: root seed (int >= 0); None draws one, readable as ``seed``.
        worker_class: ``DefaultWorker`` (one env) or ``VecWorker``.
        worker_args: extra keyword arguments for ``worker_class``.
        on_worker_error: ``'raise'`` (default: the sampler is broken after
            a worker fails) or ``'restart'`` (the worker is rebuilt with
            the current agent and env and the call goes on).
        max_restarts: how many restarts in all before a failure breaks the
            sampler (default 10).
        progress: show a progress bar on stderr; None (default) shows it
            only when stderr is a terminal.
        worker_init: a callable run as ``worker_init(worker_number)``
            before each worker (and each replacement) is built: the place
            for a user's own set-up. The process backends pickle it
            (cloudpickle) and run it in the worker's process.
        worker_threads: threads for torch and the BLAS / OpenMP pools in
            each worker process (default 1: workers share the CPUs, and
            one thread each is fastest for the small batches a worker
            runs); None leaves them as they are. Set when the process
            starts, before the agent is built. ``LocalSampler`` ignores
            it: its workers share the caller's threads.

    Example:
        >>> import gymnasium
        >>> from sampler import LocalSampler
        >>> from workers import MLPAgent
        >>> env = gymnasium.make('CartPole-v1')
        >>> agent = MLPAgent(env.observation_space, env.action_space, seed=0)
        >>> with LocalSampler(agent, 'CartPole-v1', n_workers=2,
        ...                   seed=0) as s:
        ...     batch = s.obtain_samples(100, agent_update=agent.get_params())
        >>> len(batch) >= 100, s.version
        (True, 1)
    """

    #: Its workers live in the caller's memory: a fork's child has a
    #: copy of its own, which it may use.
    _PROCESS_WORKERS = False

    def _start(self, options):
        self._workers = [None] * self.n_workers
        self._rounds = [None] * self.n_workers
        self._turn = 0
        try:
            for i in range(self.n_workers):
                try:
                    self._build_worker(i)
                except Exception as exc:
                    # A worker that cannot start is not restarted: the same
                    # recipe would fail again. Say which and why.
                    raise self._error(i, exc) from exc
            self._check_same_spaces([w.env_spaces for w in self._workers])
        except BaseException:
            self._shutdown()
            raise

    def _build_worker(self, i):
        init = self._options['worker_init']
        if init is not None:
            self._workers[i] = None
            try:
                init(i)
            except Exception as exc:
                exc.build_site = 'worker_init'
                raise
        self._workers[i] = worker = self._factory(i)
        for payload in self._recipes[i].payloads():
            apply_update(worker, payload.kind, payload.blob)
        self._rounds[i] = Round(worker)

    def _begin(self, collector, updates):
        for i, (env, agent) in enumerate(updates):
            try:
                self._rounds[i].start(collector.round_start(i),
                                      env and env.blob, agent and agent.blob)
            except Exception:
                self._on_failure(i, error_reply(self._workers[i]),
                                 collector)

    def _push(self, version, updates):
        for i, (env, agent) in enumerate(updates):
            try:
                self._rounds[i].update(version, env and env.blob,
                                       agent and agent.blob)
            except Exception:
                self._on_failure(i, error_reply(self._workers[i]),
                                 self._stream or _NoCall())

    def _end_stream(self, collector, cleanly):
        # Workers run only inside next(): nothing is in flight to wait for.
        self._stop()
        if cleanly:
            self._held = collector.take()

    def _wait_and_collect(self, collector, deadline, bar):
        self._check_closed_during()
        if deadline is not None and time.monotonic() > deadline:
            raise SamplerTimeoutError(collector.describe())
        n = self.n_workers
        running = [(self._turn + k) % n for k in range(n)
                   if self._rounds[(self._turn + k) % n].running]
        if not running:
            msg = (f'no worker is running but the call is not done: '
                   f'{collector.describe()}')
            raise RuntimeError(msg)
        i = running[0]
        self._turn = (i + 1) % n
        # A message when a chunk is full, or after FLUSH_AFTER_S, so that
        # timeouts are checked as often as with the other backends.
        reply = self._rounds[i].produce()
        if reply[0] is Reply.EPISODES:
            got = collector.add(i, reply[1])
            if bar is not None:
                bar.advance(got)
        else:
            self._on_failure(i, reply, collector)

    def _finish(self, round_number):
        for progress in self._rounds:
            if progress.running and progress.round == round_number:
                progress.finish()

    def _stop(self):
        for progress in self._rounds:
            if progress is not None and progress.running:
                # What the round leaves (a steps round's running segments,
                # cut where they are) has no call to go to.
                left = EpisodeBuffer()
                progress.halt(left)
                self._stats['discarded_episodes'] += left.n_episodes
                self._stats['discarded_transitions'] += left.transitions

    def _on_failure(self, i, reply, collector):
        """Env or agent code of worker ``i`` raised (``reply`` is its ERROR
        reply): raise it, or rebuild the worker and go on."""
        _, site, exc_type, message, tb = reply
        err = WorkerError(i, site, exc_type, message, tb)
        if not self._worker_failed(err):
            raise err
        while True:  # a replacement that fails to build counts again
            old, self._workers[i] = self._workers[i], None
            if old is not None:
                _close_quietly(old, i)
            try:
                self._build_worker(i)
                if collector.restarted(i):
                    self._rounds[i].start(collector.round_start(i))
                return
            except Exception as exc:
                err = self._error(i, exc)
                if not self._worker_failed(err):
                    raise err from exc

    def _error(self, i, exc):
        site = getattr(exc, 'build_site', None) or \
            getattr(self._workers[i], 'error_site', None)
        return WorkerError(i, site, type(exc).__name__, safe_str(exc),
                           safe_traceback(type(exc), exc))

    def _shutdown(self):
        workers, self._workers = getattr(self, '_workers', []), []
        for i, worker in enumerate(workers):
            if worker is not None:
                _close_quietly(worker, i)


class _NoCall:
    """Stands in for a call's collector when a worker fails between
    calls: its replacement has no round to start."""

    def restarted(self, worker):
        return False


def _close_quietly(worker, i):
    try:
        worker.shutdown()
    except Exception as exc:
        msg = (f'worker {i} raised while closing its env: '
               f'{type(exc).__name__}: {exc}')
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
