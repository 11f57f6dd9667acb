"""The rows ``sampler bench`` times: our samplers and the alternatives.

Every row answers ``call(n)``: collect at least ``n`` real transitions (no
reset steps), return a :class:`Sample`. Rows keep what they collected so
that, outside the timed region, :meth:`Row.check` can build it into an
EpisodeBatch, whose construction checks every invariant: a row that
miscounts or mangles episodes fails the run instead of winning it.
"""

import multiprocessing as mp
import time
import traceback

import cloudpickle
import gymnasium
import numpy as np

from workers import DefaultWorker, EnvPoolWorker, EpisodeBatch, VecWorker, \
    _nest


class Sample:
    """What one call produced."""

    __slots__ = ('transitions', 'episodes', 'batch_bytes')

    def __init__(self, transitions, episodes, batch_bytes=0):
        self.transitions = transitions
        self.episodes = episodes
        self.batch_bytes = batch_bytes


class Row:
    """One configuration to time. ``single_process`` rows are the baseline
    that ratios are taken against."""

    name = ''
    single_process = False
    limit = False  # the machine's limit, not a sampler

    def setup(self):
        pass

    def call(self, n, params):
        raise NotImplementedError

    def worker_pids(self):
        return []

    def check(self):
        """Raise ValueError if what the last call collected is invalid."""

    def discarded(self):
        return None

    def waste(self):
        return None

    def close(self):
        pass


class SamplerRow(Row):
    """One of our samplers; every call carries new agent parameters.

    ``mode`` ``'episodes'`` times ``obtain_samples(n)``; ``'steps'`` times
    ``obtain_steps`` with enough steps per env for ``n`` transitions;
    ``'stream'`` pushes the parameters (``push_update``) and takes the
    next batch of ``stream(n)``, whose workers keep stepping in between.
    With ``train_ms``, every call then "trains" that long in the caller
    (busy, or asleep with ``train_sleep``, as a learner on a GPU would
    be), inside the timed call: what a stream overlaps with sampling.
    """

    def __init__(self, sampler_class, agent, env_fn, *, workers,
                 envs_per_worker, seed, max_episode_length, progress,
                 mode='episodes', train_ms=0.0, train_sleep=False,
                 worker_class=None, step_timeout=None):
        self.mode = mode
        self.step_timeout = step_timeout
        self.worker_class = worker_class
        self.train_s = train_ms / 1000
        self.train_sleep = train_sleep
        self.sampler_class = sampler_class
        self.agent = agent
        self.env_fn = env_fn
        self.workers = workers
        self.envs_per_worker = envs_per_worker
        self.seed = seed
        self.max_episode_length = max_episode_length
        self.progress = progress
        backend = 'local' if sampler_class.__name__ == 'LocalSampler' \
            else 'processes'
        kind = ' envpool' if worker_class is EnvPoolWorker else ''
        envs = f' x {envs_per_worker}{kind} envs' \
            if envs_per_worker > 1 or kind else ''
        steps = {'steps': ', obtain_steps', 'stream': ', stream'}.get(
            mode, '')
        limit = '' if step_timeout is None else \
            f', step_timeout={step_timeout:g}'
        self.name = (f'{sampler_class.__name__} ({workers} workers{envs}'
                     f'{steps}{limit})')
        self.backend = backend
        self.sampler = None
        self.batch = None
        self.startup_s = None

    def setup(self):
        worker_class, worker_args = DefaultWorker, None
        if self.envs_per_worker > 1 or self.worker_class is not None:
            worker_class = self.worker_class or VecWorker
            worker_args = {'n_envs': self.envs_per_worker}
        options = {} if self.backend == 'local' else \
            {'progress': self.progress}
        if self.step_timeout is not None:
            options['step_timeout'] = self.step_timeout
        if self.sampler_class.__name__ == 'RaySampler':
            # Rows are set up together but timed one at a time: CPUs
            # reserved per actor would only keep later rows from starting.
            options['num_cpus'] = 0
        started = time.perf_counter()
        self.sampler = self.sampler_class(
            self.agent, self.env_fn, n_workers=self.workers, seed=self.seed,
            max_episode_length=self.max_episode_length,
            worker_class=worker_class, worker_args=worker_args, **options)
        self.startup_s = time.perf_counter() - started

    def call(self, n, params):
        if self.mode == 'stream':
            # Workers may run one batch ahead, no more: enough to overlap
            # this call's training.
            stream = self.sampler.stream(n, budget=-(-n // self.workers))
            self.sampler.push_update(params)
            self.batch = next(stream)
        elif self.mode == 'steps':
            steps = -(-n // self.sampler.n_envs)
            self.batch = self.sampler.obtain_steps(steps,
                                                   agent_update=params)
        else:
            self.batch = self.sampler.obtain_samples(n, agent_update=params)
        if self.train_s:
            train(self.train_s, self.train_sleep)
        if self.mode == 'stream':
            # The workers stop here, so that they do not run on while the
            # other rows are timed; what they sent during the training is
            # held, and the next call's stream yields it first.
            stream.close()
        return Sample(len(self.batch), int((~self.batch.cut).sum()),
                      self.batch.nbytes)

    def worker_pids(self):
        return self.sampler.worker_pids() if self.backend != 'local' else []

    def check(self):
        self.batch.check()

    def discarded(self):
        return self.sampler.stats['discarded_episodes']

    def waste(self):
        """The share of env steps that no batch returned, over the
        sampler's life so far."""
        stats = self.sampler.stats
        if not stats['env_steps']:
            return None
        return 1 - stats['transitions'] / stats['env_steps']

    def close(self):
        if self.sampler is not None:
            self.sampler.close()


def train(seconds, sleep=False):
    """Stand in for a training step: busy in this process for
    ``seconds`` of wall time, or asleep (a learner waiting on a GPU)."""
    if sleep:
        time.sleep(seconds)
        return
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        pass


class EpisodeRecorder:
    """Steps of the episodes in progress, one list per env, turned into an
    EpisodeBatch of the completed ones on demand (untimed)."""

    def __init__(self, n_envs):
        self.steps = [[] for _ in range(n_envs)]
        self.done = []

    def record(self, i, obs, action, reward, terminated, truncated,
               next_obs):
        steps = self.steps[i]
        steps.append((obs, action, reward))
        if terminated or truncated:
            self.done.append((steps, bool(terminated), bool(truncated),
                              next_obs))
            self.steps[i] = []
            return 1
        return 0

    def completed_batch(self):
        parts = []
        for steps, terminated, truncated, last in self.done:
            n = len(steps)
            term = np.zeros(n, dtype=bool)
            trunc = np.zeros(n, dtype=bool)
            term[-1], trunc[-1] = terminated, truncated
            parts.append(EpisodeBatch(
                observations=_nest.stack([s[0] for s in steps]),
                actions=_nest.stack([s[1] for s in steps]),
                rewards=np.asarray([s[2] for s in steps], dtype=float),
                terminated=term, truncated=trunc,
                last_observations=_nest.stack([last]),
                lengths=np.array([n])))
        self.done = []
        return EpisodeBatch.concatenate(*parts) if parts else None


class PlainLoopRow(Row):
    """Env and agent in one process, one step at a time: the baseline every
    sampler is measured against. It keeps every step, as a training loop
    must, but assembles episodes only in the untimed check."""

    name = 'plain loop (1 process)'
    short_name = 'plain loop'
    single_process = True

    def __init__(self, agent, env_fn, seed):
        self.agent = agent
        self.env_fn = env_fn
        self.seed = seed

    def setup(self):
        self.env = self.env_fn()
        self.obs, _ = self.env.reset(seed=self.seed)
        self.steps = []
        self.recorder = EpisodeRecorder(1)

    def call(self, n, params):
        if params is not None:
            self.agent.set_params(params)
        env, get_action, keep = self.env, self.agent.get_action, \
            self.steps.append
        obs, episodes = self.obs, 0
        for _ in range(n):
            action, _ = get_action(obs)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            keep((obs, action, reward, terminated, truncated, next_obs))
            if terminated or truncated:
                episodes += 1
                next_obs, _ = env.reset()
            obs = next_obs
        self.obs = obs
        return Sample(n, episodes)

    def check(self):
        for step in self.steps:
            self.recorder.record(0, *step)
        self.steps = []
        self.recorder.completed_batch()

    def close(self):
        self.env.close()


class VectorEnvRow(Row):
    """A vector env with the agent batched in the calling process:
    gymnasium's SyncVectorEnv (``kind`` ``'sync'``) or AsyncVectorEnv
    (``'async'``, shared memory), ours (``'ours'``: ``sampler.vector``'s
    AsyncVectorEnv on ``workers`` workers) or stable-baselines3's
    SubprocVecEnv (``'sb3'``). Each steps as its users step it: gymnasium's
    API in ``SAME_STEP`` autoreset mode, where every step is a real
    transition (the final observation comes in the info), or SB3's, which
    resets at once too. The timed loop keeps each step's arrays whole;
    episodes are cut out untimed."""

    NAMES = {'sync': 'gymnasium SyncVectorEnv',
             'async': 'gymnasium AsyncVectorEnv',
             'ours': 'our AsyncVectorEnv',
             'ours-send-recv': 'our AsyncVectorEnv send/recv',
             'sb3': 'SB3 SubprocVecEnv'}

    def __init__(self, kind, n_envs, agent, env_fn, seed, workers=None,
                 step_timeout=None):
        self.kind = kind
        self.step_timeout = step_timeout
        self.n_envs = n_envs
        self.agent = agent
        self.env_fn = env_fn
        self.seed = seed
        self.workers = workers
        self.single_process = kind == 'sync'
        where = f'{n_envs} envs'
        if kind.startswith('ours'):
            where += f', {workers} workers'
            if step_timeout is not None:
                where += f', step_timeout={step_timeout:g}'
        self.name = f'{self.NAMES[kind]} ({where})'
        self.short_name = self.name.split(' ', 1)[1] if kind == 'sync' \
            else self.name

    def setup(self):
        started = time.perf_counter()
        self._setup()
        self.startup_s = time.perf_counter() - started

    def _setup(self):
        fns = [self.env_fn] * self.n_envs
        same_step = gymnasium.vector.AutoresetMode.SAME_STEP
        if self.kind == 'sb3':
            from stable_baselines3.common.vec_env import SubprocVecEnv
            self.envs = SubprocVecEnv(fns)
            self.envs.seed(self.seed)
            self.obs = self.envs.reset()
        else:
            if self.kind.startswith('ours'):
                from sampler.vector import AsyncVectorEnv
                # send/recv: the policy acts for one worker's envs while
                # the others' step.
                batch = self.n_envs // self.workers \
                    if self.kind == 'ours-send-recv' else None
                self.envs = AsyncVectorEnv(fns, autoreset_mode=same_step,
                                           n_workers=self.workers,
                                           batch_size=batch,
                                           step_timeout=self.step_timeout)
            elif self.kind == 'sync':
                self.envs = gymnasium.vector.SyncVectorEnv(
                    fns, autoreset_mode=same_step)
            else:
                self.envs = gymnasium.vector.AsyncVectorEnv(
                    fns, autoreset_mode=same_step, shared_memory=True)
            self.obs, _ = self.envs.reset(seed=self.seed)
        self.sent = False
        self.steps = []
        self.recorder = EpisodeRecorder(self.n_envs)

    def call(self, n, params):
        if params is not None:
            self.agent.set_params(params)
        if self.kind == 'sb3':
            return self._call_sb3(n)
        if self.kind == 'ours-send-recv':
            return self._call_send_recv(n)
        envs, get_actions = self.envs, self.agent.get_actions
        keep = self.steps.append
        obs, transitions, episodes = self.obs, 0, 0
        while transitions < n:
            actions, _ = get_actions(obs)
            next_obs, rewards, terms, truncs, infos = envs.step(actions)
            done = terms | truncs
            ended = int(done.sum())
            keep((obs, actions, rewards, terms, truncs, next_obs,
                  infos['final_obs'] if ended else None))
            episodes += ended
            transitions += self.n_envs
            obs = next_obs
        self.obs = obs
        return Sample(transitions, episodes)

    def _call_send_recv(self, n):
        envs, get_actions = self.envs, self.agent.get_actions
        keep = self.steps.append
        if not self.sent:  # every env's first actions
            self.sent_actions, _ = get_actions(self.obs)
            self.sent_obs = self.obs
            envs.send(self.sent_actions)
            self.sent = True
        transitions = episodes = 0
        while transitions < n:
            next_obs, rewards, terms, truncs, infos = envs.recv()
            ids = infos['env_id']
            done = terms | truncs
            ended = int(done.sum())
            keep((ids, self.sent_obs[ids], self.sent_actions[ids], rewards,
                  terms, truncs, next_obs,
                  infos['final_obs'] if ended else None))
            actions, _ = get_actions(next_obs)
            envs.send(actions, ids)
            self.sent_obs[ids], self.sent_actions[ids] = next_obs, actions
            episodes += ended
            transitions += len(ids)
        return Sample(transitions, episodes)

    def _call_sb3(self, n):
        envs, get_actions = self.envs, self.agent.get_actions
        keep = self.steps.append
        obs, transitions, episodes = self.obs, 0, 0
        while transitions < n:
            actions, _ = get_actions(obs)
            next_obs, rewards, dones, infos = envs.step(actions)
            truncs = np.array([i['TimeLimit.truncated'] for i in infos])
            ended = int(dones.sum())
            keep((obs, actions, rewards, dones & ~truncs, truncs, next_obs,
                  [info.get('terminal_observation') for info in infos]
                  if ended else None))
            episodes += ended
            transitions += self.n_envs
            obs = next_obs
        self.obs = obs
        return Sample(transitions, episodes)

    def worker_pids(self):
        if self.kind == 'sync':
            return []
        if self.kind.startswith('ours'):
            return self.envs._workers.sampler.worker_pids()
        return [p.pid for p in self.envs.processes]

    def check(self):
        if self.kind == 'ours-send-recv':
            self._check_send_recv()
            return
        for obs, actions, rewards, terms, truncs, next_obs, final in \
                self.steps:
            for i in range(self.n_envs):
                last = final[i] if terms[i] or truncs[i] else next_obs[i]
                self.recorder.record(i, obs[i], actions[i], rewards[i],
                                     terms[i], truncs[i], last)
        self.steps = []
        self.recorder.completed_batch()

    def _check_send_recv(self):
        for ids, obs, actions, rewards, terms, truncs, next_obs, final in \
                self.steps:
            for p, i in enumerate(ids):
                last = final[p] if terms[p] or truncs[p] else next_obs[p]
                self.recorder.record(i, obs[p], actions[p], rewards[p],
                                     terms[p], truncs[p], last)
        self.steps = []
        self.recorder.completed_batch()

    def close(self):
        self.envs.close()


class ParallelLoopsRow(Row):
    """``n`` copies of a single-process row (``row``, not set up) in ``n``
    processes, stepping until they have done a call's transitions between
    them (a shared counter, added to every ``LOOP_STEPS`` transitions), and
    sending back only counts: no sampler at all. What ``n`` processes can
    do on this machine at this moment, the limit to read our multi-worker
    rows against (on a shared machine it is often well below ``n`` times
    the single-process rate)."""

    limit = True

    def __init__(self, n, row):
        self.n = n
        self.row = row
        self.seed = row.seed
        self.name = f'{row.short_name} x {n} processes (limit)'
        self.processes = []
        self.pipes = []

    def setup(self):
        method = 'forkserver' if 'forkserver' in \
            mp.get_all_start_methods() else 'spawn'
        ctx = mp.get_context(method)
        seeds = np.random.SeedSequence(self.seed).generate_state(self.n)
        self.counter = ctx.Value('q', 0)
        for seed in seeds:
            ours, theirs = ctx.Pipe()
            process = ctx.Process(
                target=_serve_plain_loop, name='bench-plain-loop',
                args=(theirs, cloudpickle.dumps(self.row), int(seed),
                      self.counter),
                daemon=True)
            process.start()
            theirs.close()
            self.processes.append(process)
            self.pipes.append(ours)

    def _ask_all(self, message):
        try:
            for pipe in self.pipes:
                pipe.send(message)
            replies = [pipe.recv() for pipe in self.pipes]
        except (EOFError, OSError):
            codes = [p.exitcode for p in self.processes]
            msg = f'a plain loop process died (exit codes {codes})'
            raise RuntimeError(msg) from None
        for reply in replies:
            if reply[0] == 'error':
                raise RuntimeError(f'a plain loop process failed:\n'
                                   f'{reply[1]}')
        return replies

    def call(self, n, params):
        self.counter.value = 0
        replies = self._ask_all(('call', n, params))
        return Sample(sum(r[1].transitions for r in replies),
                      sum(r[1].episodes for r in replies))

    def worker_pids(self):
        return [p.pid for p in self.processes]

    def check(self):
        self._ask_all(('check',))

    def close(self):
        for pipe in self.pipes:
            try:
                pipe.send(('exit',))
            except OSError:
                pass
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join()
        for pipe in self.pipes:
            pipe.close()
        self.processes, self.pipes = [], []


#: Transitions a process of ParallelLoopsRow runs between looks at the
#: counter.
LOOP_STEPS = 64


def _serve_plain_loop(pipe, blob, seed, counter):
    """A single-process row in a process of its own, driven by ``('call',
    n, params)``, ``('check',)`` and ``('exit',)``; ``blob`` is the
    cloudpickled row, ``counter`` the transitions done in this call by all
    the processes."""
    row = cloudpickle.loads(blob)
    row.seed = seed
    failure = None
    try:
        row.setup()
    except Exception:
        failure = traceback.format_exc()
    try:
        while True:
            message = pipe.recv()
            if message[0] == 'exit':
                break
            try:
                if failure is not None:
                    pipe.send(('error', failure))
                elif message[0] == 'call':
                    _, n, params = message
                    done = Sample(0, 0)
                    while counter.value < n:
                        part = row.call(LOOP_STEPS, params)
                        params = None  # set once per call
                        with counter.get_lock():
                            counter.value += part.transitions
                        done.transitions += part.transitions
                        done.episodes += part.episodes
                    pipe.send(('ok', done))
                else:
                    row.check()
                    pipe.send(('ok', None))
            except Exception:
                pipe.send(('error', traceback.format_exc()))
    except (EOFError, OSError):
        pass  # the bench has gone
    finally:
        if failure is None:
            row.close()
