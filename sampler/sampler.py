"""Sampler: the public calls every backend shares (the whole call is
drawn in :mod:`sampler._protocol`; what backends share below the calls is
:mod:`sampler._backend`).

The base class owns everything that must behave the same on every backend:
argument checks and their messages, versions and rounds, statistics,
closed / broken states, and what a replacement worker must be given (the
current agent, its latest parameters and the env updates since the last
new env).

Around every call (``_one_call``): one call at a time (a call from
another thread is refused, never interleaved); a backend's reads of
worker messages run inside its ``_reads_guard`` (Ctrl-C waits for the
message being read, so pipes stay whole); ``close()`` from another thread
wakes the call (``_interrupt_call``), which raises SamplerClosedError; a
worker's error is told which call it ended. In the child of an
``os.fork()``, a sampler whose workers are processes refuses every call
and lets go of them without a word (``_forked``).
"""

import contextlib
import inspect
import numbers
import os
import threading
import time
import warnings
import weakref
from typing import Any, Dict, Iterator, Optional

import numpy as np

from sampler import _pickling
from sampler._call import Collector
from sampler._process_setup import ProcessSetup, exit_if_importing_main
from sampler._protocol import RoundKind, Update, UpdateKind
from sampler.errors import (BrokenSamplerError, SamplerClosedError,
                            SamplerError, SamplerTimeoutError,
                            WorkerCrashedError, WorkerError)
from workers import DefaultWorker
from workers import WorkerFactory, _nest
from workers.worker import EPISODE_ID_STRIDE
from workers.agents import as_agent
from workers.env_update import as_env_update
from workers.episode_batch import EpisodeBatch


#: Env updates a restart recipe holds before it warns (see WorkerRecipe).
RECIPE_WARN_AT = 100

#: Every sampler not yet closed, for what a fork's child must forget.
_open_samplers = weakref.WeakSet()


def _forget_samplers_in_child():
    """After ``os.fork()`` (a DataLoader worker, a user's own fork): the
    child's copies of the samplers must never touch the parent's workers,
    neither when it exits nor when it is collected."""
    for sampler in list(_open_samplers):
        try:
            sampler._forked()
        except Exception:  # nothing may fail in a fork's child here
            pass


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_forget_samplers_in_child)


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, where known)."""
    if hasattr(os, 'sched_getaffinity'):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class WorkerRecipe:
    """What rebuilds a worker as it is now: its agent, the last parameters
    sent since, and the env updates since its last new env.

    Bounded wherever the updates say they may be: an update that
    ``replaces_env`` (an env id, an env, a constructor) forgets everything
    before it, and one that ``overrides`` (a new task) replaces an update
    of its own class right before it. Other custom ``EnvUpdate`` objects
    may depend on every earlier one, so all are kept; past
    RECIPE_WARN_AT of them a warning says how to bound them.
    """

    __slots__ = ('agent', 'params', 'envs', '_last_update', '_warned')

    def __init__(self, agent, env):
        self.agent = agent
        self.params = None
        self.envs = [env]
        self._last_update = None
        self._warned = False

    def record(self, agent, env, env_update):
        if agent is not None:
            if agent.kind is UpdateKind.AGENT:
                self.agent, self.params = agent, None
            else:
                self.params = agent
        if env is not None:
            last = self._last_update
            if env_update.replaces_env:
                self.envs = [env]
            elif env_update.overrides and type(last) is type(env_update):
                self.envs[-1] = env
            else:
                self.envs.append(env)
            self._last_update = env_update
            if len(self.envs) > RECIPE_WARN_AT and not self._warned:
                self._warned = True
                msg = (f'a worker restart would replay {len(self.envs)} env '
                       f'updates of type {type(env_update).__name__}; set '
                       f'replaces_env = True on the class if each builds a '
                       f'new env, or overrides = True if each makes the one '
                       f'before it irrelevant, and only the last is kept')
                warnings.warn(msg, ResourceWarning, stacklevel=4)

    def updates(self):
        """Env updates then agent (and parameters), in the order to apply."""
        out = list(self.envs) + [self.agent]
        if self.params is not None:
            out.append(self.params)
        return out


class Sampler:
    """Base class of the samplers; see :class:`LocalSampler` for the
    arguments, which every backend shares.

    Backends build on :class:`sampler._backend.Backend`, which fills in
    the messages of a call; each implements ``_start(options)`` and
    ``_shutdown()`` and lists its options in ``_OPTIONS`` (name ->
    default).
    """

    _OPTIONS = {'on_worker_error': 'raise', 'max_restarts': 10,
                'progress': None, 'worker_init': None, 'worker_threads': 1}

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
                 **backend_options: Any) -> None:
        self._closed = True  # until constructed, so __del__ does nothing
        # A worker process re-importing a script that samples without the
        # __main__ guard ends here; its caller says why (see the function).
        exit_if_importing_main()
        options = self._check_options(backend_options)
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
            worker_factory = WorkerFactory(
                max_episode_length=max_episode_length, n_workers=n_workers,
                seed=seed, worker_class=worker_class,
                worker_args=worker_args)
        self._factory = worker_factory
        agent_list = self._per_worker(agents, 'agents')
        for i, agent in enumerate(agent_list):
            as_agent(agent, what=self._name('agents', agents, i))
        env_list = self._per_worker(envs, 'envs')
        env_updates = [as_env_update(e, what=self._name('envs', envs, i))
                       for i, e in enumerate(env_list)]
        for i, update in enumerate(env_updates):
            worker_factory.worker_class.check_env_update(
                update, self._name('envs', envs, i))
        agent_blobs = self._pickle_each('agents', agents, agent_list,
                                        UpdateKind.AGENT)
        env_blobs = self._pickle_each('envs', envs, env_updates,
                                      UpdateKind.ENV, originals=env_list)
        self._can_set_params = [hasattr(a, 'set_params') for a in agent_list]
        self._recipes = [WorkerRecipe(a, e)
                         for a, e in zip(agent_blobs, env_blobs)]
        self._options = options
        self._version = 0
        self._calls = 0
        self._broken = None
        self._stats = {'episodes': 0, 'transitions': 0, 'env_steps': 0,
                       'discarded_episodes': 0, 'discarded_transitions': 0,
                       'worker_restarts': 0, 'calls': 0}
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
        _open_samplers.add(self)

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
        ``calls`` (streams count as one each)."""
        stats = dict(self._stats)
        stats['held_transitions'] = sum(len(b) for b in self._held)
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
        count = _check_count(num_samples, 'num_samples')
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
        count = _check_count(n_eps_per_worker, 'n_eps_per_worker')
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
        count = _check_count(steps_per_env, 'steps_per_env')
        return self._call((RoundKind.STEPS, count), agent_update, env_update,
                          timeout, f'obtain_steps({count})')

    def _call(self, goal, agent_update, env_update, timeout, what):
        _check_timeout(timeout)
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
        self._stats['episodes'] += int((~batch.cut).sum())
        self._stats['transitions'] += len(batch)
        return batch

    def _take_updates(self, agent_update, env_update):
        """Check and pickle a call's (or push's) updates, record them for
        restarts, and count the new version; per worker, ``(env Update,
        agent Update)``, each None if not updated."""
        agents, can_set_params = self._prepare_agent_update(agent_update)
        envs, env_objects = self._prepare_env_update(env_update)
        # Every argument is accepted: only now may the sampler's state change.
        self._can_set_params = can_set_params
        updates = []
        for i, recipe in enumerate(self._recipes):
            agent = None if agents is None else agents[i]
            env = None if envs is None else envs[i]
            recipe.record(agent, env, None if envs is None else env_objects[i])
            updates.append((env, agent))
        if agents is not None or envs is not None:
            self._version += 1
        return updates

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
        count = _check_count(num_samples, 'num_samples')
        _check_timeout(timeout)
        if max_staleness is not None and (
                isinstance(max_staleness, bool) or
                not isinstance(max_staleness, numbers.Integral) or
                max_staleness < 0):
            msg = (f'max_staleness must be None or an int >= 0, got '
                   f'{max_staleness!r}')
            raise ValueError(msg)
        if budget is not None:
            budget = _check_count(budget, 'budget')
        self._check_usable()
        self._check_no_stream(f'stream({count})')
        return self._stream_batches(count, timeout, max_staleness, budget)

    def _stream_batches(self, count, timeout, max_staleness, budget):
        what = f'stream({count})'
        with self._one_call(what):
            # Checked again at the first next(): two streams may have been
            # made before either ran.
            collector = self._open_stream(count, max_staleness, budget)
        ended = False
        try:
            with self._one_call(what):
                self._begin(collector, [(None, None)] * self.n_workers)
            while True:
                with self._one_call(what):
                    batch = self._next_batch(collector, timeout, what)
                yield batch
        except GeneratorExit:
            ended = True
            raise
        finally:
            self._stream = None
            if not self._closed and self._broken is None and \
                    not self._is_fork():
                with self._reads_guard():
                    self._end_stream(collector, ended)

    def _open_stream(self, count, max_staleness, budget):
        self._check_no_stream(f'stream({count})')
        round_number = self._calls
        self._calls += 1
        self._stats['calls'] += 1
        collector = Collector(
            kind=RoundKind.STREAM, count=count, round_number=round_number,
            version=self._version, n_workers=self.n_workers,
            n_envs=self.n_envs, max_staleness=max_staleness,
            stats=self._stats, next_episode_ids=self._next_episode_ids,
            budget=budget)
        held, self._held = self._held, []
        for batch in held:  # from the last stream: kept if not too stale
            if max_staleness is None or \
                    int(batch.versions.min()) >= self._version - max_staleness:
                collector.arrived.append(batch)
                collector.transitions += len(batch)
            else:
                self._count_discarded(batch)
        self._stream = collector
        return collector

    def _next_batch(self, collector, timeout, what):
        deadline = None if timeout is None else time.monotonic() + timeout
        self._resume(collector)
        try:
            while not collector.done:
                self._wait_and_collect(collector, deadline, None)
                # What is read frees budget, kept or discarded.
                for worker, n in collector.take_credits():
                    self._credit(worker, n)
        except SamplerTimeoutError as err:
            msg = f'{what} timed out after {timeout} s: {err}'
            raise SamplerTimeoutError(msg) from None
        batch = self._concatenate(collector.take())
        self._stats['episodes'] += int((~batch.cut).sum())
        self._stats['transitions'] += len(batch)
        return batch

    def _end_stream(self, collector, cleanly):
        """Pause the workers of a stream that ended; hold what they sent
        until they said done. After an error, only stop them."""
        self._stop()
        if not cleanly:
            return
        collector.draining = True
        deadline = time.monotonic() + self._options.get('shutdown_timeout', 5)
        try:
            while not collector.done:
                self._wait_and_collect(collector, deadline, None)
        except SamplerTimeoutError:
            pass  # a stuck worker: the next call ignores its late segments
        self._held = collector.take()

    def _drop_held(self):
        """A call that is not a stream discards what the last stream
        held."""
        held, self._held = self._held, []
        for batch in held:
            self._count_discarded(batch)

    def _count_discarded(self, batch):
        self._stats['discarded_episodes'] += batch.n_episodes
        self._stats['discarded_transitions'] += len(batch)

    def _check_no_stream(self, what):
        if self._stream is not None:
            msg = (f'{what} while a stream of this sampler is open: one call '
                   f'at a time; leave the stream\'s loop (or close() it) '
                   f'first')
            raise SamplerError(msg)

    def _run_collector(self, collector, deadline):
        """Run ``collector`` with this backend's message hooks."""
        return collector.run(self._wait_and_collect, deadline, self._stop,
                             self._finish, self._options['progress'],
                             lambda: self._closed)

    def _prepare_agent_update(self, update):
        if update is None:
            return None, self._can_set_params
        items = self._per_worker(update, 'agent_update')
        kinds = []
        for i, item in enumerate(items):
            if hasattr(item, 'get_action'):
                kinds.append(UpdateKind.AGENT)
            elif self._can_set_params[i]:
                kinds.append(UpdateKind.PARAMS)
            else:
                msg = (f'{self._name("agent_update", update, i)} is not an '
                       f'agent (it has no get_action), so it would be '
                       f'parameters, but worker {i}\'s agent has no '
                       f'set_params; send an agent object to replace the '
                       f'agent, or give the agent set_params(params)')
                raise TypeError(msg)
        pickled = self._pickle_each('agent_update', update, items, kinds)
        can_set_params = [hasattr(item, 'set_params')
                          if kind is UpdateKind.AGENT
                          else old for item, kind, old in
                          zip(items, kinds, self._can_set_params)]
        return pickled, can_set_params

    def _prepare_env_update(self, update):
        if update is None:
            return None, None
        items = self._per_worker(update, 'env_update')
        objects = [as_env_update(e, what=self._name('env_update', update, i))
                   for i, e in enumerate(items)]
        for i, item in enumerate(objects):
            self._factory.worker_class.check_env_update(
                item, self._name('env_update', update, i))
        pickled = self._pickle_each('env_update', update, objects,
                                    UpdateKind.ENV, originals=items)
        return pickled, objects

    def _per_worker(self, value, name):
        n = self.n_workers
        if isinstance(value, list):
            if len(value) != n:
                msg = (f'{name} is a list of length {len(value)} but '
                       f'n_workers is {n}; pass one object (every worker '
                       f'gets a copy) or a list of exactly {n}, one per '
                       f'worker')
                raise ValueError(msg)
            missing = [i for i, item in enumerate(value) if item is None]
            if missing and name.endswith('_update'):
                msg = (f'{name}[{missing[0]}] is None: a list of {name} '
                       f'needs one for every worker, since every worker '
                       f'goes to the new version (to keep a worker\'s '
                       f'parameters, send them again)')
                raise ValueError(msg)
            return value
        return [value] * n

    @staticmethod
    def _name(name, given, i):
        return f'{name}[{i}]' if isinstance(given, list) else name

    def _pickle_each(self, name, given, items, kinds, originals=None):
        """Pickle each distinct object once (the same object given to every
        worker is pickled a single time); per worker, an Update."""
        originals = items if originals is None else originals
        blobs = {}
        updates = []
        for i, (item, original) in enumerate(zip(items, originals)):
            key = id(original)
            if key not in blobs:
                try:
                    blobs[key] = _pickling.dumps(item)
                except Exception as err:
                    what = self._name(name, given, i)
                    msg = (f'{what} cannot be pickled by cloudpickle, and it '
                           f'must be to reach the workers: '
                           f'{type(err).__name__}: {err}. '
                           f'{_PICKLE_HINTS[name]}')
                    raise TypeError(msg) from err
            kind = kinds if isinstance(kinds, UpdateKind) else kinds[i]
            updates.append(Update(kind, blobs[key]))
        return updates

    def _concatenate(self, batches):
        try:
            return EpisodeBatch.concatenate(*batches, missing_infos='mask')
        except (ValueError, TypeError) as err:
            first = batches[0]
            for batch in batches[1:]:
                try:
                    EpisodeBatch.concatenate(first, batch,
                                             missing_infos='mask')
                except (ValueError, TypeError) as why:
                    a, b = (int(x.worker_numbers[0]) for x in (first, batch))
                    msg = (f"worker {b}'s episodes do not fit worker {a}'s, "
                           f'so they cannot make one batch: '
                           f'{_difference(first, batch, a, b) or why}. '
                           f'Every worker must return the same structure '
                           f'(keys, shapes and dtypes of observations, '
                           f'actions and infos)')
                    raise SamplerError(msg) from err
            raise

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

    # State ---------------------------------------------------------------

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

    def _check_closed_during(self, collector=None):
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
            msg = (f'this sampler is broken since {self._broken}; close it '
                   f'and make a new one (or pass on_worker_error="restart" '
                   f'to replace failed workers)')
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

    def _check_options(self, options):
        unknown = sorted(set(options) - set(self._OPTIONS))
        if unknown:
            msg = (f'{type(self).__name__} got unknown option(s) '
                   f'{", ".join(unknown)}; its options are '
                   f'{", ".join(sorted(self._OPTIONS))}')
            raise TypeError(msg)
        merged = {**self._OPTIONS, **options}
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
        init = merged['worker_init']
        if init is not None and not callable(init):
            msg = (f'worker_init must be a callable taking the worker '
                   f'number, got {init!r}')
            raise TypeError(msg)
        return merged

    def _process_setup(self):
        """The :class:`ProcessSetup` of every worker process (backends
        whose workers have processes of their own)."""
        init = self._options['worker_init']
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
        return ProcessSetup(threads=self._options['worker_threads'],
                            init=blob)

    # Shutdown ------------------------------------------------------------

    def close(self) -> None:
        """Stop the workers and release everything; calling it again does
        nothing. From another thread while a call runs, that call raises
        SamplerClosedError."""
        if self._closed:
            return
        self._closed = True
        _open_samplers.discard(self)
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


_PICKLE_HINTS = {
    'agents': ('Keep unpicklable state (locks, open files, sockets, device '
               'handles) out of the agent, or create it lazily on first '
               'use.'),
    'agent_update': ('Send plain parameters (e.g. agent.get_params(), '
                     'numpy arrays) or a picklable agent.'),
    'envs': ('Pass an env id or a zero-argument constructor instead, so the '
             'env is built inside the worker.'),
    'env_update': ('Pass an env id, a zero-argument constructor or a '
                   'picklable EnvUpdate instead.'),
}


def _difference(first, other, a, b):
    """Where two batches' arrays differ in shape per step, or None."""
    for field in ('observations', 'actions', 'last_observations',
                  'env_infos', 'agent_infos', 'episode_infos'):
        mine = dict(_nest.leaves(getattr(first, field)))
        theirs = dict(_nest.leaves(getattr(other, field)))
        for path in mine.keys() & theirs.keys():
            x, y = mine[path], theirs[path]
            if np.shape(x)[1:] != np.shape(y)[1:]:
                return (f"{field}{path} has shape {np.shape(x)[1:]} per "
                        f"step in worker {a}'s and {np.shape(y)[1:]} in "
                        f"worker {b}'s")
    return None


def _check_timeout(timeout):
    if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, numbers.Real) or not timeout > 0):
        msg = (f'timeout must be None or a number of seconds > 0, got '
               f'{timeout!r}')
        raise ValueError(msg)


def _check_count(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
            or value < 1:
        msg = f'{name} must be an int >= 1, got {value!r}'
        raise ValueError(msg)
    return int(value)
