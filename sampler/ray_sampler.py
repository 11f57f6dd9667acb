"""RaySampler: one Ray actor per worker, for users who outgrow one machine.

The messages and the whole call are drawn in :mod:`sampler._protocol`;
the rules every backend shares are :mod:`sampler._backend`'s. Here, a
command is a method call on the worker's actor
(:mod:`sampler._ray_actor`), its updates put in Ray's object store once
per call and shared by every actor; replies come back as the calls'
results, which the caller waits for with ``ray.wait``. While a worker's
round runs, the caller keeps DEPTH ``sample()`` calls queued on its
actor, each returning the round's next message, and asks for another
with each message that is not the last.

Keeping DEPTH calls queued on every actor means an actor never waits for
the caller's round trip between two chunks of work, and bounds what it
produces ahead (DEPTH chunks).

Failures: env or agent exceptions come back as Failed replies; an actor
whose process died makes its references raise ``RayActorError``, which
is a Gone reply here.

The runtime: a sampler uses Ray as it finds it initialised; otherwise it
starts a local runtime sized for its workers (``address=None``) or joins
a cluster (``address='auto'`` or ``'host:port'``). What it started or
joined it shuts down or leaves when the last sampler using it closes;
a runtime it found running is never shut down.
"""

import math
import numbers
import os
import re
import threading
import time
import warnings
import weakref

from sampler import _pickling
from sampler._backend import Backend, WorkerHandle
from sampler._options import check_streaming_options, process_setup
from sampler._protocol import (ENV_COMMANDS, Credit, Failed, Gone, Push,
                               Segments, Start, Stop)
from sampler._ray_actor import SamplerWorker
from sampler.sampler import available_cpus

#: ``sample()`` calls kept queued on each actor during a call.
DEPTH = 2

#: Longest a waiting call takes to see ``close()`` from another thread.
WAKE_S = 0.1

#: The actors' concurrency group for ``where()`` (sampler._probe).
_PROBE_GROUP = 'probe'

#: Seconds a replacement may wait for Ray to place it before a
#: ResourceWarning says so (once).
PLACE_NOTICE_S = 3.0

_PIP_HINT = 'pip install "rollout-sampler[ray]"'


def _import_ray():
    try:
        import ray
    except ImportError as err:
        msg = (f'RaySampler needs Ray, which is not installed: '
               f'{_PIP_HINT}')
        raise ImportError(msg) from err
    return ray


class _Runtime:
    """Counts the samplers using a runtime this module started or joined,
    and ends it when the last one closes."""

    lock = threading.Lock()
    users = 0

    @classmethod
    def acquire(cls, ray, address, num_cpus):
        """Make sure Ray is initialised; return the release function."""
        with cls.lock:
            if ray.is_initialized():
                if cls.users == 0:
                    return _nothing  # the user's runtime: never ours to end
            elif address is None and os.environ.get('RAY_ADDRESS'):
                # Ray's own way to name the cluster to join (its jobs set
                # it for their drivers): joined, with its own CPUs.
                ray.init(logging_level='WARNING')
            elif address is None:
                # 'local': Ray given no address joins the cluster that its
                # temp folder's ray_current_cluster file names, which a
                # cluster that was killed leaves behind, naming nothing.
                ray.init(address='local', num_cpus=num_cpus,
                         include_dashboard=False, logging_level='WARNING')
            else:
                ray.init(address=address, logging_level='WARNING')
            cls.users += 1
        return cls._release

    @classmethod
    def _release(cls, ray):
        with cls.lock:
            cls.users -= 1
            if cls.users == 0 and ray.is_initialized():
                ray.shutdown()


def _nothing(ray):
    pass


class _Actor(WorkerHandle):
    """The caller's view of one actor."""

    def __init__(self, number, actor, version):
        super().__init__(number)
        self.actor = actor
        self.running = False  # sample() calls are asked for
        # The sampler's version its recipe held when it was spawned: one
        # placed later than updates came is rebuilt (see _placed).
        self.version = version
        self.spawned = time.monotonic()
        self.noticed = False  # the notice that it waits was given


class RaySampler(Backend):
    """Runs each worker in a Ray actor and streams episodes back.

    Takes every argument of :class:`~sampler.LocalSampler`, the options of
    :class:`~sampler.MultiprocessingSampler` (``on_worker_error``,
    ``max_restarts``, ``progress``, ``shutdown_timeout``,
    ``startup_timeout``, ``max_staleness``; not ``start_method``), and:

    Args:
        address: where Ray runs when it is not initialised yet: None
            (default) starts a local runtime with this machine's CPUs (or
            more, if the workers ask for more), whatever clusters ran here
            before, unless the ``RAY_ADDRESS`` variable names a cluster
            (as Ray's jobs do): that one is joined;
            ``'auto'`` joins the cluster started with ``ray start`` on this
            machine; ``'host:port'`` joins that one.
        num_cpus: CPUs Ray reserves for each worker (default 1).
        actor_options: further options for each actor, as
            ``ray.remote(...).options`` takes them (``resources``,
            ``scheduling_strategy``, ``runtime_env``, ``memory``, ...).
        worker_init, worker_threads: see :class:`~sampler.LocalSampler`;
            both take effect in each actor's process.

    Ray must be installed: ``pip install "rollout-sampler[ray]"``. Nodes of
    a cluster need rollout-sampler installed too.

    A dead actor's process exit code is not known to Ray's callers, so a
    ``WorkerCrashedError`` here has ``exitcode=None`` and quotes what Ray
    reported instead.
    """

    _OPTIONS = {**Backend._OPTIONS, 'progress': None,
                'shutdown_timeout': 5.0, 'startup_timeout': 60.0,
                'max_staleness': 0, 'address': None, 'num_cpus': 1,
                'actor_options': None}

    def __init__(self, agents, envs, **kwargs):
        self._ray = _import_ray()
        super().__init__(agents, envs, **kwargs)

    def _start(self, options):
        check_streaming_options(options)
        address = options['address']
        if address is not None and not isinstance(address, str):
            msg = (f"address must be None (start a local runtime), 'auto' "
                   f"or 'host:port', got {address!r}")
            raise ValueError(msg)
        cpus = options['num_cpus']
        if isinstance(cpus, bool) or not isinstance(cpus, numbers.Real) \
                or not cpus >= 0:
            msg = f'num_cpus must be a number >= 0, got {cpus!r}'
            raise ValueError(msg)
        actor_options = options['actor_options'] or {}
        if not isinstance(actor_options, dict):
            msg = (f'actor_options must be a dict of Ray actor options, got '
                   f'{actor_options!r}')
            raise TypeError(msg)
        clash = sorted({'num_cpus', 'max_restarts'} & set(actor_options))
        if clash:
            msg = (f'actor_options may not set {", ".join(clash)}: pass '
                   f'num_cpus as its own option; the sampler restarts '
                   f'actors itself (on_worker_error, max_restarts)')
            raise ValueError(msg)
        ray = self._ray
        # where() runs in a group of its own, beside the calls that run
        # the round one at a time.
        self._actor_class = ray.remote(
            concurrency_groups={_PROBE_GROUP: 1})(SamplerWorker).options(
            num_cpus=cpus, max_restarts=0, max_task_retries=0,
            **actor_options)
        # A runtime of its own gets this machine's CPUs, or more if the
        # workers ask for more: later samplers of this process share it.
        release = _Runtime.acquire(
            ray, address, max(available_cpus(),
                              math.ceil(cpus * self.n_workers)))
        self._handles = []
        self._pending = {}  # object ref -> (handle, 'sample' or another)
        self._shared = {}  # id(blob) -> its ref, while a call starts
        self._finalizer = weakref.finalize(
            self, _shutdown, ray, self._handles, self._pending,
            options['shutdown_timeout'], release)
        try:
            self._factory_ref = ray.put(_pickling.dumps(self._factory))
            self._setup = process_setup(options)
            self._start_workers(time.monotonic() +
                                options['startup_timeout'])
        except BaseException:
            self._finalizer()
            raise

    def _recipe_refs(self, i):
        """Worker ``i``'s recipe, each distinct update put in the object
        store once: the arguments that build it."""
        updates = self._recipes[i].updates()
        refs = {}
        for update in updates:
            if id(update.blob) not in refs:
                refs[id(update.blob)] = self._ray.put(update)
        return [self._factory_ref, self._setup] + \
            [refs[id(u.blob)] for u in updates]

    def _spawn(self, i):
        actor = self._actor_class.remote(i, *self._recipe_refs(i))
        handle = _Actor(i, actor, self._version)
        self._pending[actor.ready.remote()] = (handle, 'ready')
        return handle

    def _startup_hint(self):
        ray = self._ray
        total = ray.cluster_resources().get('CPU', 0)
        free = ray.available_resources().get('CPU', 0)
        return (f'each asks Ray for num_cpus={self._options["num_cpus"]} '
                f'and the cluster has {free:g} of {total:g} CPUs free; '
                f'lower num_cpus or n_workers, or add nodes')

    def worker_pids(self):
        """Process ids of the actors, in worker order (None for one that
        has not started yet)."""
        return [handle.pid for handle in self._handles]

    # Sampling ------------------------------------------------------------

    def _begin(self, collector, updates):
        try:
            super()._begin(collector, updates)
        finally:
            self._shared = {}

    def _push(self, version, updates):
        try:
            super()._push(version, updates)
        finally:
            self._shared = {}

    def _ref(self, update):
        """An object ref of ``update`` (None for None): put in the store
        once while a call's commands go out, shared by every actor."""
        if update is None:
            return None
        key = id(update.blob)
        if key not in self._shared:
            self._shared[key] = self._ray.put(update)
        return self._shared[key]

    def _send(self, handle, command):
        kind = type(command)
        if kind is Credit:
            return  # asked for each message, an actor is never ahead
        if handle.pid is None and kind not in ENV_COMMANDS:
            # A replacement Ray has not placed yet (no resources free,
            # say): calls queued on it would pile up for as long as it
            # waits. What it needs is sent when it is placed (_placed). A
            # vector env's commands wait for it instead: it cannot go on
            # without its envs, and sends one at a time.
            return
        actor = handle.actor
        if kind is Start or kind is Push:
            ref = actor.command.remote(
                command._replace(env=None, agent=None),
                self._ref(command.env), self._ref(command.agent))
        else:
            ref = actor.command.remote(command)
        self._pending[ref] = (handle, 'command')
        if kind is Start:
            # sample() calls left from the last call run first; their
            # replies are kept or discarded like any other, and only
            # replies of this round ask for more, so DEPTH calls of this
            # round stay queued.
            handle.running = True
            self._ask(handle, DEPTH)
        elif kind is Stop:
            # No more sample() calls. The ones queued (DEPTH at most, each
            # a chunk of work) still run before the Stop. (Cancelling
            # queued actor calls is not safe: Ray may then wait 30 s for
            # the missing call and fail the actor's later ones.)
            handle.running = False

    def _ask(self, handle, n=1):
        for _ in range(n):
            self._pending[handle.actor.sample.remote()] = (handle, 'sample')

    def _resume(self, collector):
        asked = {id(h) for h, what in self._pending.values()
                 if what == 'sample'}
        for handle in self._handles:
            if handle.running and id(handle) not in asked:
                self._ask(handle, DEPTH)

    def _wait(self, collector, deadline):
        # Each actor's replies in the order its calls were sent (Ray runs
        # them in that order, but ray.wait may report two ready ones in
        # either): an empty "done" read before the episodes sent ahead of
        # it would end the worker's part of the call without them.
        heads = {}
        for ref, (handle, _) in self._pending.items():
            heads.setdefault(id(handle), ref)
        self._notice_unplaced()
        ready = self._wait_one(list(heads.values()), deadline)
        if not ready:
            return None
        return self._replies(ready[0], collector)

    def _replies(self, ref, collector):
        handle, _ = self._pending.pop(ref)
        if self._handles[handle.number] is not handle:
            return  # from an actor already replaced
        for reply in self._get(ref):
            yield handle, reply
            if type(reply) is Segments and handle.running and \
                    self._handles[handle.number] is handle and \
                    not collector.done and not reply.done and \
                    reply.round == collector.round:
                self._ask(handle)

    def _where(self, workers, timeout=0.5):
        """What each of ``workers`` is doing now, for those whose actor
        answers within ``timeout`` seconds (see sampler._probe), and for
        those not placed yet, what they wait for."""
        placed = [i for i in workers if self._handles[i].pid is not None]
        out = {i: where for i, where in
               self._ask_probes(placed, 'where', timeout).items() if where}
        for i in workers:
            if self._handles[i].pid is None:
                out[i] = self._unplaced(self._handles[i])
        return out

    # Replacements Ray cannot place yet ------------------------------------

    def _unplaced(self, handle):
        """What a replacement not placed yet waits for, in words."""
        ray = self._ray
        try:
            total = ray.cluster_resources().get('CPU', 0)
            free = ray.available_resources().get('CPU', 0)
        except Exception:
            total = free = float('nan')
        return (f'its replacement has waited '
                f'{time.monotonic() - handle.spawned:.1f} s for Ray to place '
                f'it: it asks for num_cpus={self._options["num_cpus"]} and '
                f'the cluster has {free:g} of {total:g} CPUs free')

    def _placed(self, handle, collector):
        # Updates came while it waited: it rebuilds its worker from the
        # recipe as it is now (ahead of anything sent to it after).
        if handle.version != self._version:
            handle.version = self._version
            ref = self._rebuild(handle)
            self._pending[ref] = (handle, 'rebuild')
        if collector is not None and collector.joined(handle.number):
            self._send(handle, Start(collector.round_start(handle.number)))

    def _rebuild(self, handle):
        return handle.actor.rebuild.remote(*self._recipe_refs(handle.number))

    def _places_late(self):
        return True

    def _notice_unplaced(self):
        """Say once per replacement that it waits to be placed (after
        PLACE_NOTICE_S), and that calls go on without it."""
        now = time.monotonic()
        for handle in self._handles:
            if handle.pid is None and not handle.noticed and \
                    now - handle.spawned > PLACE_NOTICE_S and \
                    self._serving:
                handle.noticed = True
                msg = (f'worker {handle.number}: {self._unplaced(handle)}. '
                       f'Calls go on with the {self.stats["live_workers"]} '
                       f'live workers (obtain_samples and streams; '
                       f'obtain_exact_episodes and obtain_steps wait for '
                       f'it); it joins once Ray places it')
                warnings.warn(msg, ResourceWarning, stacklevel=2)

    def _ask_probes(self, numbers, method, timeout):
        """Worker number -> what its actor's ``method`` (of the probe
        concurrency group, which runs while ``sample`` does) returned, for
        those that answered within ``timeout`` seconds."""
        asked = {}
        for i in numbers:
            call = getattr(self._handles[i].actor, method).options(
                concurrency_group=_PROBE_GROUP)
            asked[call.remote()] = i
        if not asked:
            return {}
        ready, _ = self._ray.wait(list(asked), num_returns=len(asked),
                                  timeout=timeout)
        out = {}
        for ref in ready:
            try:
                out[asked[ref]] = self._ray.get(ref)
            except Exception:
                continue  # an actor that died: its failure says more
        return out

    def _pulses(self, numbers):
        # An actor that does not answer (its round's thread holds the GIL
        # in C code, say) is read as not beating.
        answered = self._ask_probes(numbers, 'pulse', 1.0)
        return {i: answered.get(i) for i in numbers}

    def _hang_report(self, handle):
        return self._ask_probes([handle.number], 'hang_report',
                                0.5).get(handle.number)

    def _kill(self, handle):
        self._ray.kill(handle.actor, no_restart=True)

    def _wait_one(self, refs, deadline):
        """``ray.wait`` for one of ``refs`` until ``deadline``, in slices
        of WAKE_S, so that ``close()`` from another thread is seen."""
        while True:
            timeout = WAKE_S
            if deadline is not None:
                timeout = min(timeout, max(deadline - time.monotonic(), 0))
            ready, _ = self._ray.wait(refs, num_returns=1, timeout=timeout)
            self._check_closed_during()
            if ready or (deadline is not None and
                         time.monotonic() >= deadline):
                return ready

    def _forked(self):
        self._finalizer.detach()

    def _get(self, ref):
        """The replies a call returned; a dead actor, or a task Ray could
        not run, as a reply like the others."""
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError as err:
            return [Gone(None, _ray_report(err))]
        except ray.exceptions.RayTaskError as err:
            cause = getattr(err, 'cause', None) or err
            return [Failed('returning the episodes', type(cause).__name__,
                           str(cause), str(err))]
        except ray.exceptions.RayError as err:
            # The reply is lost (with its node's object store, say): the
            # worker's part cannot be trusted, so it fails as a dead one.
            said = (str(err).strip().splitlines() or [''])[0]
            return [Gone(None, f'; Ray lost its reply '
                               f'({type(err).__name__}: {said})')]

    def _retire(self, handle):
        for ref, (owner, _) in list(self._pending.items()):
            if owner is handle:
                del self._pending[ref]
        self._ray.kill(handle.actor, no_restart=True)

    # Shutdown ------------------------------------------------------------

    def _shutdown(self):
        finalizer = getattr(self, '_finalizer', None)
        if finalizer is not None:
            finalizer()


def _ray_report(err):
    """What Ray said about a dead actor, briefly: its pid and exit detail."""
    text = str(err)
    pid = re.search(r'\bpid: (\d+)', text)
    detail = re.search(r'Worker exit detail: (.*?\.)(?:\s|$)', text)
    said = detail.group(1) if detail else text.splitlines()[0]
    process = f'actor process {pid.group(1)}' if pid else 'the actor'
    return f'; Ray reports of {process}: {said}'


def _shutdown(ray, handles, pending, timeout, release):
    """Close the actors' envs, then kill the actors; returns within about
    ``timeout`` seconds. Ends the runtime if this was its last user."""
    if not ray.is_initialized():  # ended already (interpreter exit)
        handles.clear()
        pending.clear()
        return
    closing = []
    for handle in handles:
        try:
            closing.append(handle.actor.shutdown.remote())
        except Exception:
            pass  # the actor is gone already
    if closing:
        ray.wait(closing, num_returns=len(closing), timeout=timeout / 2)
    for handle in handles:
        try:
            ray.kill(handle.actor, no_restart=True)
        except Exception:
            pass
    handles.clear()
    pending.clear()
    release(ray)
