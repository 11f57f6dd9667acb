"""LocalSampler: every worker in the calling process, one after another."""

import time
import traceback
import warnings

from sampler.errors import SamplerTimeoutError, WorkerError
from sampler.sampler import Sampler
from workers import EpisodeBuffer

#: What a guarded call returns when its worker failed and was replaced.
_RESTARTED = object()


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

    def _start(self, options):
        self._workers = [None] * self.n_workers
        self._round = 0
        self._kind = 'episodes'
        self._attempts = [0] * self.n_workers
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
        self._workers[i] = worker = self._factory(i)
        for payload in self._recipes[i].payloads():
            _apply(worker, payload)

    def _sample(self, goal, updates, round_number, deadline):
        kind, count = goal
        self._round, self._kind = round_number, kind
        self._attempts = [0] * self.n_workers
        for i, (env, agent) in enumerate(updates):
            self._guarded(i, self._begin, i, env, agent)
        # One buffer for the whole call: a single batch is built at the end.
        buffer = EpisodeBuffer()
        if kind == 'samples':
            while buffer.transitions < count:
                for i in range(self.n_workers):
                    _check_deadline(deadline, f'{buffer.transitions} of '
                                    f'{count} transitions were collected')
                    self._guarded(i, self._rollout_into, i, buffer)
                    if buffer.transitions >= count:
                        break
            return [buffer.to_batch()]
        for i in range(self.n_workers):
            before = buffer.n_episodes
            while buffer.n_episodes - before < count:
                _check_deadline(deadline, f'worker {i} had returned '
                                f'{buffer.n_episodes - before} of {count} '
                                f'episodes')
                if self._guarded(i, self._rollout_into, i, buffer) is \
                        _RESTARTED:
                    # The replacement redoes the round from its seeds, so
                    # the call stays reproducible; what the failed worker
                    # returned of it would come again, and is dropped.
                    self._stats['discarded_episodes'] += \
                        buffer.keep_first(before)
            # A VecWorker may finish several episodes at once.
            self._stats['discarded_episodes'] += \
                buffer.keep_first(before + count)
        return [buffer.to_batch()]

    def _rollout_into(self, i, buffer):
        self._workers[i].rollout_into(buffer)

    def _begin(self, i, env, agent):
        worker = self._workers[i]
        _apply(worker, env)
        _apply(worker, agent)
        worker.start_round(self._round, self._version)

    def _guarded(self, i, fn, *args):
        """``fn(*args)`` for worker ``i``. An exception from env or agent
        code becomes a WorkerError, or (on_worker_error='restart') the
        worker is rebuilt and _RESTARTED returned: its episode is lost."""
        try:
            return fn(*args)
        except Exception as exc:
            self._raise_unless_restarting(i, exc)
        while True:  # a replacement that fails to build counts again
            try:
                self._rebuild(i)
                return _RESTARTED
            except Exception as exc:
                self._raise_unless_restarting(i, exc)

    def _raise_unless_restarting(self, i, exc):
        err = self._error(i, exc)
        if not self._worker_failed(err):
            raise err from exc

    def _rebuild(self, i):
        old = self._workers[i]
        self._workers[i] = None
        if old is not None:
            _close_quietly(old, i)
        self._build_worker(i)
        if self._kind == 'samples':
            # What the failed worker returned is kept: the replacement
            # gets seeds of its own so that it cannot return it again.
            self._attempts[i] += 1
        self._workers[i].start_round(self._round, self._version,
                                     attempt=self._attempts[i])

    def _error(self, i, exc):
        site = getattr(self._workers[i], 'error_site', None)
        return WorkerError(i, site, type(exc).__name__, str(exc),
                           traceback.format_exc())

    def _shutdown(self):
        workers, self._workers = getattr(self, '_workers', []), []
        for i, worker in enumerate(workers):
            if worker is not None:
                _close_quietly(worker, i)


def _apply(worker, payload):
    if payload is None:
        return
    if payload.kind == 'env':
        worker.update_env(payload.load())
    else:
        worker.update_agent(payload.load())


def _check_deadline(deadline, progress):
    if deadline is not None and time.monotonic() > deadline:
        raise SamplerTimeoutError(progress)


def _close_quietly(worker, i):
    try:
        worker.shutdown()
    except Exception as exc:
        msg = (f'worker {i} raised while closing its env: '
               f'{type(exc).__name__}: {exc}')
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
