"""Sampler: the public calls every backend shares, their argument checks
and messages, versions and rounds, and statistics. The whole call is
drawn in :mod:`sampler._protocol`. Its other parts, each in a module of
its own: what the workers are sent (:mod:`sampler._updates`), the
stream's life (:mod:`sampler._stream`), serving one call at a time and
the closed, broken and forked states (:mod:`sampler._serving`), the
options (:mod:`sampler._options`); what backends share below the calls is
:mod:`sampler._backend`.
"""

import contextlib
import inspect
import numbers
import os
import threading
import time
from typing import Any, Dict, Iterator, Optional

from sampler._call import Collector, ended_episodes, join_batches
from sampler._options import check_count, check_options, check_timeout
from sampler._process_setup import exit_if_importing_main
from sampler._protocol import RoundKind
from sampler._serving import CallGuard, open_samplers
from sampler._stream import StreamCalls
from sampler._updates import Updates
from sampler.errors import SamplerTimeoutError
from workers import DefaultWorker
from workers._multi_agent import MultiAgentWorker, makes_multi_agent_env
from workers import WorkerFactory
from workers.worker import EPISODE_ID_STRIDE
from workers.episode_batch import EpisodeBatch


def _multi_agent_worker(agents, envs, worker_class, worker_args,
                        policy_mapping):
    """``(worker_class, worker_args)``: a MultiAgentWorker with the
    policy mapping where the envs are PettingZoo ParallelEnvs (or their
    classes), the agents a dict by policy id, or a policy mapping is
    given."""
    multi = worker_class is MultiAgentWorker or \
        policy_mapping is not None or isinstance(agents, dict) or \
        any(makes_multi_agent_env(e) for e in
            (envs if isinstance(envs, list) else [envs]))
    if not multi:
        return worker_class, worker_args
    if worker_class is not DefaultWorker and \
            worker_class is not MultiAgentWorker:
        msg = (f'multi-agent envs and policies run in a MultiAgentWorker, '
               f'not {worker_class.__name__}; leave worker_class out')
        raise ValueError(msg)
    if policy_mapping is not None and not callable(policy_mapping):
        msg = (f'policy_mapping must be a callable env agent id -> policy '
               f'id, got {policy_mapping!r}')
        raise TypeError(msg)
    args = dict(worker_args or {})
    if policy_mapping is not None:
        args['policy_mapping'] = policy_mapping
    return MultiAgentWorker, args


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, where known)."""
    if hasattr(os, 'sched_getaffinity'):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class Sampler(StreamCalls, CallGuard):
    """Base class of the samplers; see :class:`LocalSampler` for the
    arguments, which every backend shares.

    Backends build on :class:`sampler._backend.Backend`, which fills in
    the messages of a call; each implements ``_start(options)`` and
    ``_shutdown()`` and lists its options in ``_OPTIONS`` (name ->
    default).
    """

    _OPTIONS = {'on_worker_error': 'raise', 'max_restarts': 10,
                'progress': None, 'worker_init': None, 'worker_threads': 1,
                'step_timeout': None}

    #: Whether the workers are processes of this process's: a fork's
    #: child may not use them (LocalSampler's workers are its own copy).
    _PROCESS_WORKERS = True

    def __init__(self, agents: Any, envs: Any, *,
                 worker_factory: Optional[WorkerFactory] = None,
                 n_workers: Optional[int] = None,
                 max_episode_length: Optional[int] = None,
                 seed: Optional[int] = None,
                 worker_class: type = DefaultWorker,
                 worker_args: Optional[dict] = None,
                 policy_mapping: Optional[Any] = None,
                 **backend_options: Any) -> None:
        self._closed = True  # until constructed, so __del__ does nothing
        # A worker process re-importing a script that samples without the
        # __main__ guard ends here; its caller says why (see the function).
        exit_if_importing_main()
        options = check_options(type(self), backend_options)
        if worker_factory is not None:
            given = {'n_workers': n_workers,
                     'max_episode_length': max_episode_length,
                     'seed': seed, 'worker_args': worker_args}
            clash = [k for k, v in given.items() if v is not None]
            if worker_class is not DefaultWorker:
                clash.append('worker_class')
            if clash:
                msg = (f'pass either worker_factory or {", ".join(clash)}, '
                       f'not both: the factory already fixes them')
                raise ValueError(msg)
            if not isinstance(worker_factory, WorkerFactory):
                msg = (f'worker_factory must be a workers.WorkerFactory, got '
                       f'{worker_factory!r}')
                raise TypeError(msg)
        else:
            if n_workers is None:
                lists = [len(x) for x in (agents, envs)
                         if isinstance(x, list)]
                n_workers = lists[0] if lists else available_cpus()
            worker_class, worker_args = _multi_agent_worker(
                agents, envs, worker_class, worker_args, policy_mapping)
            worker_factory = WorkerFactory(
                max_episode_length=max_episode_length, n_workers=n_workers,
                seed=seed, worker_class=worker_class,
                worker_args=worker_args)
        self._factory = worker_factory
        self._updates = Updates(self.n_workers, worker_factory.worker_class,
                                agents, envs)
        self._options = options
        self._version = 0
        self._calls = 0
        self._broken = None
        self._stats = {'episodes': 0, 'transitions': 0, 'env_steps': 0,
                       'discarded_episodes': 0, 'discarded_transitions': 0,
                       'worker_restarts': 0, 'worker_hangs': 0,
                       'lost_episodes': 0, 'calls': 0}
        self._next_episode_ids = [i * EPISODE_ID_STRIDE
                                  for i in range(self.n_workers)]
        self._stream = None  # the open stream's Collector
        self._held = []  # what the last stream's workers sent after it
        self._pid = os.getpid()
        self._lock = threading.Condition()
        self._running = None  # (what, thread) of the call running
        self._serving = False  # until the workers have started
        self._start(options)
        self._serving = True
        self._closed = False
        open_samplers.add(self)

    @classmethod
    def from_worker_factory(cls, worker_factory: WorkerFactory,
                            agents: Any, envs: Any,
                            **backend_options: Any) -> 'Sampler':
        """A sampler whose workers ``worker_factory`` builds.

        Args:
            worker_factory: a :class:`~workers.WorkerFactory`; it fixes
                ``n_workers``, the seed, the step cap and the worker class.
            agents: an agent or a list of one per worker.
            envs: an env (id, instance, constructor or ``EnvUpdate``) or a
                list of one per worker.
            **backend_options: the backend's keyword options.
        """
        return cls(agents, envs, worker_factory=worker_factory,
                   **backend_options)

    # Properties ----------------------------------------------------------

    @property
    def n_workers(self) -> int:
        """How many workers run episodes."""
        return self._factory.n_workers

    @property
    def seed(self) -> int:
        """The root seed; drawn at construction when none was given."""
        return self._factory.seed

    @property
    def version(self) -> int:
        """0 at first, one more after every call that carries an update."""
        return self._version

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    @property
    def n_envs(self) -> int:
        """Envs over all workers (a VecWorker steps several)."""
        factory = self._factory
        per_worker = factory.worker_args.get('n_envs')
        if per_worker is None:
            param = inspect.signature(factory.worker_class).parameters.get(
                'n_envs')
            per_worker = 1 if param is None or \
                param.default is inspect.Parameter.empty else param.default
        return self.n_workers * per_worker

    @property
    def stats(self) -> Dict[str, int]:
        """Counts since construction: ``episodes`` that ended and
        ``transitions`` in the batches returned; ``env_steps``, every
        ``env.step`` any worker took, returned or not (``env_steps -
        transitions`` is the waste, and the steps of episodes still
        running); ``discarded_episodes`` and ``discarded_transitions``,
        segments collected but not returned (of an older version, or of a
        failed worker whose part was redone); ``held_transitions``, what
        workers sent after the last stream ended, which the next stream
        yields first (or another call discards); ``worker_restarts``;
        ``worker_hangs``, workers found hung (``step_timeout``);
        ``lost_episodes``, the episodes a failed worker was running in a
        call that keeps what its workers sent (``obtain_samples``, a
        stream), one per env it held: they go with it, never returned in
        part (other calls redo the failed worker's part instead);
        ``calls`` (streams count as one each); ``live_workers``, the
        workers started and not known to have failed (a replacement Ray
        has not placed yet is not)."""
        stats = dict(self._stats)
        stats['held_transitions'] = sum(len(b) for b in self._held)
        stats['live_workers'] = sum(
            1 for h in getattr(self, '_handles', ()) if h.pid is not None)
        return stats

    @property
    def worker_factory(self) -> WorkerFactory:
        return self._factory

    # Sampling ------------------------------------------------------------

    def obtain_samples(self, num_samples: int, agent_update: Any = None,
                       env_update: Any = None, *,
                       timeout: Optional[float] = None) -> EpisodeBatch:
        """Whole episodes holding at least ``num_samples`` transitions.

        Args:
            num_samples: int >= 1, the fewest transitions to return.
            agent_update: an agent (has ``get_action``: replaces the agent)
                or parameters (passed to ``agent.set_params``); a list gives
                one to each worker.
            env_update: an ``EnvUpdate``, ``gymnasium.Env``, env id or
                zero-argument constructor; a list gives one to each worker.
            timeout: seconds to wait at most; None waits as long as it
                takes.

        Returns:
            EpisodeBatch: every episode collected under the current version.

        Raises:
            SamplerTimeoutError: ``timeout`` ran out (the sampler stays
                usable).
            WorkerError, WorkerCrashedError: a worker failed.
            SamplerClosedError, BrokenSamplerError: the sampler cannot run.
        """
        count = check_count(num_samples, 'num_samples')
        return self._call((RoundKind.SAMPLES, count), agent_update, env_update,
                          timeout, f'obtain_samples({count})')

    def obtain_exact_episodes(self, n_eps_per_worker: int,
                              agent_update: Any = None,
                              env_update: Any = None, *,
                              timeout: Optional[float] = None
                              ) -> EpisodeBatch:
        """Exactly ``n_eps_per_worker`` episodes from every worker, worker
        0's first. Reproducible: the same seed, ``n_workers`` and sequence
        of calls give the same batches on every backend.

        Takes the same ``agent_update``, ``env_update`` and ``timeout`` as
        :meth:`obtain_samples`.
        """
        count = check_count(n_eps_per_worker, 'n_eps_per_worker')
        return self._call((RoundKind.EPISODES, count), agent_update,
                          env_update, timeout,
                          f'obtain_exact_episodes({count})')

    def obtain_steps(self, steps_per_env: int, agent_update: Any = None,
                     env_update: Any = None, *,
                     timeout: Optional[float] = None) -> EpisodeBatch:
        """Exactly ``steps_per_env`` steps of every env of every worker,
        as segments; the envs keep running between calls.

        An episode still running when the call ends is cut there
        (``cut=True``, with the observation to bootstrap from in
        ``last_observations``) and goes on at the start of the next
        ``obtain_steps`` call, under that call's version (same
        ``episode_ids``, ``starts=False``). Nothing is stepped that is not
        returned. Whole-episode calls in between start every episode anew;
        an env update starts new episodes too.

        Takes the same ``agent_update``, ``env_update`` and ``timeout`` as
        :meth:`obtain_samples`.

        Returns:
            EpisodeBatch: ``n_envs * steps_per_env`` transitions, worker 0's
            segments first, all of the current version.
        """
        count = check_count(steps_per_env, 'steps_per_env')
        return self._call((RoundKind.STEPS, count), agent_update, env_update,
                          timeout, f'obtain_steps({count})')

    def _call(self, goal, agent_update, env_update, timeout, what):
        check_timeout(timeout)
        with self._one_call(what):
            return self._call_alone(goal, agent_update, env_update, timeout,
                                    what)

    def _call_alone(self, goal, agent_update, env_update, timeout, what):
        self._check_no_stream(what)
        updates = self._take_updates(agent_update, env_update)
        self._drop_held()
        deadline = None if timeout is None else time.monotonic() + timeout
        round_number = self._calls
        self._calls += 1
        self._stats['calls'] += 1
        kind, count = goal
        collector = Collector(
            kind=kind, count=count, round_number=round_number,
            version=self._version, n_workers=self.n_workers,
            n_envs=self.n_envs,
            max_staleness=self._options.get('max_staleness', 0),
            stats=self._stats, next_episode_ids=self._next_episode_ids)
        try:
            batches = self._sample(collector, updates, deadline)
        except SamplerTimeoutError as err:
            msg = f'{what} timed out after {timeout} s: {err}'
            raise SamplerTimeoutError(msg) from None
        batch = self._concatenate(batches)
        # Env episodes: a multi-agent one ends with all its agents' ends.
        self._stats['episodes'] += ended_episodes(batch)
        self._stats['transitions'] += len(batch)
        return batch

    def _take_updates(self, agent_update, env_update):
        """Check and pickle a call's (or push's) updates, record them for
        restarts (:mod:`sampler._updates`), and count the new version; per
        worker, ``(env Update, agent Update)``, each None if not
        updated."""
        updates = self._updates.take(agent_update, env_update)
        if agent_update is not None or env_update is not None:
            self._version += 1
        return updates

    @property
    def _recipes(self):
        """Per worker, what rebuilds it as it is now (a WorkerRecipe)."""
        return self._updates.recipes

    def push_update(self, agent_update: Any = None,
                    env_update: Any = None) -> int:
        """Send new parameters (or agent, or env update) to every worker
        without waiting for any; returns the new version at once.

        A worker in a :meth:`stream` applies the newest update it has at
        its next step: its segments are cut there, and the episode goes on
        under the new version. An update not applied yet is superseded by
        a newer one, so a fast learner builds no backlog. Idle workers
        apply it before their next call; a worker still sampling whole
        episodes (``max_staleness`` > 0) when its episodes end. Takes the
        ``agent_update`` and ``env_update`` of :meth:`obtain_samples`
        (per-worker lists too).
        """
        if agent_update is None and env_update is None:
            msg = ('push_update needs an agent_update or an env_update; '
                   'with neither there is no new version to push')
            raise ValueError(msg)
        with self._one_call('push_update()', reads=False):
            updates = self._take_updates(agent_update, env_update)
            if self._stream is not None:
                self._stream.push(self._version)
            self._push(self._version, updates)
            return self._version

    def stream(self, num_samples: int, *, timeout: Optional[float] = None,
               max_staleness: Optional[int] = None,
               budget: Optional[int] = None) -> Iterator[EpisodeBatch]:
        """Batches of at least ``num_samples`` transitions of segments,
        yielded as the workers produce them; the workers keep stepping
        between ``next()`` calls, and the envs keep running.

        Each worker sends its envs' steps a few at a time, segments cut
        at every message (``cut=True``; the episode goes on in the next
        one, with the same ``episode_ids``). :meth:`push_update` changes
        the version while the stream runs.

        Args:
            num_samples: transitions per batch, at least.
            timeout: seconds each ``next()`` may wait, or None.
            max_staleness: segments more than this many versions older
                than the newest pushed are discarded (and counted in
                ``stats``); None keeps everything.
            budget: transitions a worker may send that the learner has not
                read yet; a worker that far ahead pauses until the learner
                reads, so memory stays bounded. Default: 4 messages' worth.

        Leaving the loop (or ``close()`` of the iterator) pauses the
        workers with their envs' state kept; what they sent meanwhile is
        held and comes first in the next stream (if not too stale), or is
        discarded, and counted, by another call. A worker error raises
        from ``next()``, or with ``on_worker_error="restart"`` the stream
        goes on. One call or stream at a time.
        """
        count = check_count(num_samples, 'num_samples')
        check_timeout(timeout)
        if max_staleness is not None and (
                isinstance(max_staleness, bool) or
                not isinstance(max_staleness, numbers.Integral) or
                max_staleness < 0):
            msg = (f'max_staleness must be None or an int >= 0, got '
                   f'{max_staleness!r}')
            raise ValueError(msg)
        if budget is not None:
            budget = check_count(budget, 'budget')
        self._check_usable()
        self._check_no_stream(f'stream({count})')
        return self._stream_batches(count, timeout, max_staleness, budget)

    def _run_collector(self, collector, deadline):
        """Run ``collector`` with this backend's message hooks."""
        return collector.run(self._wait_and_collect, deadline, self._stop,
                             self._finish, self._options['progress'],
                             lambda: self._closed)

    def _concatenate(self, batches):
        """The batch a call returns (a backend may build it its own way)."""
        return join_batches(batches)

    def _check_same_spaces(self, spaces):
        """``spaces[i]`` is worker i's ``(observation_space,
        action_space)``; all must match, since episodes are
        concatenated."""
        first = spaces[0]
        for i in range(1, self.n_workers):
            if spaces[i] != first:
                msg = (f"worker {i}'s env has observation space "
                       f'{spaces[i][0]} and action space {spaces[i][1]}, but '
                       f"worker 0's has {first[0]} and {first[1]}; all "
                       f'workers must share their spaces, since their '
                       f'episodes are concatenated')
                raise ValueError(msg)

    # Shutdown ------------------------------------------------------------

    def close(self) -> None:
        """Stop the workers and release everything; calling it again does
        nothing. From another thread while a call runs, that call raises
        SamplerClosedError."""
        if self._closed:
            return
        self._closed = True
        open_samplers.discard(self)
        if self._is_fork():
            return  # the parent's workers: the parent closes them
        me = threading.current_thread()
        with self._lock:
            running = self._running
        if running is not None and running[1] is not me:
            # Wake the call and give it a moment to leave, so that it does
            # not read the pipes that shutdown reads and closes.
            self._interrupt_call()
            deadline = time.monotonic() + \
                self._options.get('shutdown_timeout', 5) / 2
            with self._lock:
                while self._running is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._lock.wait(remaining)
        with self._reads_guard():
            self._shutdown()

    def __enter__(self) -> 'Sampler':
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __del__(self):
        if not getattr(self, '_closed', True):
            self.close()

    def __reduce__(self):
        msg = (f'a {type(self).__name__} cannot be pickled: it owns its '
               f'workers (processes, pipes, envs). Build the sampler in the '
               f'process that samples, and send what it is made of (the '
               f'agent or its parameters, env ids or constructors, the '
               f'worker_factory) instead')
        raise TypeError(msg)

    def __repr__(self):
        state = 'closed' if self._closed else (
            'broken' if self._broken is not None else 'open')
        return (f'<{type(self).__name__} {state}: {self.n_workers} workers, '
                f'version {self._version}>')

    # Backend hooks ---------------------------------------------------------

    def _start(self, options):
        raise NotImplementedError

    def _reads_guard(self):
        """A context the caller's reads of worker messages run in (see
        ``_framing.reads_finish_first``); nothing for backends without
        pipes."""
        return contextlib.nullcontext()

    def _interrupt_call(self):
        """Wake a call waiting in another thread: ``close()`` ran."""

    def _forked(self):
        """In a fork's child: let go of everything that is the parent's
        (exit handlers, finalizers) without touching it."""

    def _sample(self, collector, updates, deadline):
        """Start ``collector``'s round on every worker with ``updates``
        and run it; raises SamplerTimeoutError past ``deadline`` (a
        ``time.monotonic()`` value, or None)."""
        self._begin(collector, updates)
        return self._run_collector(collector, deadline)

    def _resume(self, collector):
        """Before a stream waits for its next batch: have its workers
        sampling (backends that ask for each message)."""

    def _shutdown(self):
        raise NotImplementedError
