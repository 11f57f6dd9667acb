"""MultiAgentVectorEnv: PettingZoo envs as one gymnasium vector env, every
env agent a slot, on our workers (``sampler.vector.MultiAgentVectorEnv``).

The vector env of :mod:`sampler.vector` with PettingZoo envs in place of
gymnasium's: the same workers, commands and errors (``EnvWorkers``), an
``AgentSlotsWorker`` (:mod:`workers.agent_slots`, where the slots and
their conventions are described) in each. A step's rows come back per
worker, ``A`` slots per env, and are put together in env order::

    learner: actions (n_envs * A, ...)
      --> per worker, its envs' slots' rows --StepEnvs--> its envs step
          the actions of the agents in them
      <-- EnvsDone: per slot its observation (zeros for an agent not in
          its env), reward, flags and info, merged over its slots
      --> one batch in slot order (``infos["active"]`` the mask)
"""

import numbers

import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from sampler._protocol import CallEnvs, ResetEnvs, StepEnvs
from sampler.vector import AsyncVectorEnv, EnvWorkers, checked_env_fns
from workers.agent_slots import AgentSlotsWorker
from workers.env_stepper import InfoMerger, as_autoreset_mode


class MultiAgentVectorEnv(AsyncVectorEnv):
    """PettingZoo ``ParallelEnv``\\ s as one ``gymnasium.vector.VectorEnv``
    whose envs are their agents, for parameter-sharing training loops
    (what SuperSuit's ``pettingzoo_env_to_vec_env_v1`` and
    ``concat_vec_envs_v1`` give, on our workers).

    With ``E`` envs of ``A`` possible agents, ``num_envs`` is ``E * A``:
    env ``j``'s agents hold slots ``j * A`` to ``j * A + A - 1``, in the
    order of ``possible_agents`` (:attr:`agent_ids`). An agent that is not
    in its env (it left, or has not come yet) keeps its slot, as
    SuperSuit's ``black_death`` does: observation zeros, reward 0, flags
    False, action ignored. ``infos["active"]`` is True where the slot's
    agent is in its env: its observation is real and its next action
    will be used (mask the others out of a loss). A slot's
    ``terminated``/``truncated`` are its agent's (``truncated`` also
    where it left without a flag). An env is reset when its agents are
    all gone, as ``autoreset_mode`` says (NEXT_STEP: at the next step,
    which ignores its slots' actions; SAME_STEP: at once, with
    ``final_obs`` and ``final_info``).

    Args:
        env_fns: zero-argument callables, each returning a PettingZoo
            ``ParallelEnv`` (AEC envs through PettingZoo's
            ``aec_to_parallel``); every env must have the same
            ``possible_agents``, and every agent the same spaces.
        copy: return a copy of the observations, or the vector env's own
            array, valid until the next reset or step.
        autoreset_mode: NEXT_STEP (default, gymnasium's) or SAME_STEP
            (SuperSuit's and SB3's).
        n_workers: worker processes (default: one per CPU, at most one
            per env).
        backend: ``"multiprocessing"``, ``"ray"`` or ``"local"``.
        on_worker_error: ``"raise"`` or ``"restart"`` (a replaced
            worker's envs come back reset, each slot truncated, with
            ``infos["worker_restarted"]``).
        backend_options: ``step_timeout`` and the backend's options, as
            :class:`AsyncVectorEnv`'s.

    ``reset(seed=s)`` seeds env ``j`` with ``s + j`` (a list: one seed per
    env). ``call``, ``get_attr`` and ``render`` answer once per env, not
    per slot.
    """

    def __init__(self, env_fns, copy=True,
                 autoreset_mode=AutoresetMode.NEXT_STEP, *,
                 n_workers=None, backend='multiprocessing',
                 on_worker_error='raise', **backend_options):
        self._workers = None
        self._ready = []
        self.closed = False
        env_fns = checked_env_fns(env_fns, on_worker_error)
        self.autoreset_mode = as_autoreset_mode(autoreset_mode)
        if self.autoreset_mode is AutoresetMode.DISABLED:
            msg = ('autoreset_mode=DISABLED: a vector env of agents resets '
                   'an env when its agents are all gone; use NEXT_STEP or '
                   'SAME_STEP')
            raise ValueError(msg)
        self.env_fns = env_fns
        self.n_pettingzoo_envs = len(env_fns)
        self.copy = copy
        self.shared_memory = False
        self.batch_size = None
        self._group = None
        self._workers = workers = EnvWorkers(
            env_fns, n_workers=n_workers, backend=backend,
            autoreset_mode=self.autoreset_mode, start_method=None,
            backend_options=dict(backend_options,
                                 on_worker_error=on_worker_error),
            merge_infos=True, worker_class=AgentSlotsWorker)
        try:
            #: the agents of every env, in slot order
            self.agent_ids = list(workers.run(
                'reading the agents', {0: CallEnvs(
                    'possible_agents', how='get', indices=[0])})[0][0])
            n_agents = len(self.agent_ids)
            self.num_envs = self.n_pettingzoo_envs * n_agents
            # Per worker, its slots: (first slot, number of slots).
            self._shares = [(a * n_agents, n * n_agents)
                            for a, n in workers.shares]
            self.single_observation_space = workers.observation_spaces[0]
            self.single_action_space = workers.action_spaces[0]
            self.observation_space = batch_space(
                self.single_observation_space, self.num_envs)
            self.action_space = batch_space(self.single_action_space,
                                            self.num_envs)
            self._read_metadata()
        except BaseException:
            self.close()
            raise
        self._nothing_in_flight()

    def _first_env(self, name):
        # A ParallelEnv may lack what a gymnasium env always has.
        has = self._workers.run('reading the env metadata', {0: CallEnvs(
            name, how='has', indices=[0])})[0][0]
        if not has:
            return {} if name == 'metadata' else None
        return super()._first_env(name)

    def reset_async(self, seed=None, options=None):
        self._assert_is_running()
        n = self.n_pettingzoo_envs
        if seed is None:
            seed = [None] * n
        elif isinstance(seed, numbers.Integral) and \
                not isinstance(seed, bool):
            seed = [int(seed) + j for j in range(n)]
        seed = list(seed)
        if len(seed) != n:
            msg = (f'reset(seed=...) takes one seed per PettingZoo env: '
                   f'{n} of them, got {len(seed)}')
            raise ValueError(msg)
        self._assert_no_call('reset_async')
        if options is not None and 'reset_mask' in options:
            msg = ('a vector env of agents resets its envs itself: '
                   'reset_mask is not taken')
            raise ValueError(msg)
        self._workers.send('reset', self._workers.per_worker(
            lambda k, a, n: ResetEnvs(seed[a:a + n], options)))
        self._reset_mask_sent = None

    def step_async(self, actions):
        rows = self._action_rows(
            actions, f'slots ({self.n_pettingzoo_envs} envs of '
                     f'{len(self.agent_ids)} agents)')
        self._workers.send('step', {
            k: StepEnvs(rows[a:a + n]) for k, (a, n) in
            enumerate(self._shares)})

    def _replaced(self, results):
        """A replaced worker's reset of its envs, as a step that truncated
        every slot of theirs."""
        for k in self._workers.restarted & set(results):
            self._workers.restarted.discard(k)
            n = self._shares[k][1]
            observations, infos = results[k]
            merger = InfoMerger(n)
            for slot in range(n):
                if self.autoreset_mode is AutoresetMode.SAME_STEP:
                    last = self._blocks[k][slot]
                    infos = merger._add_info(infos, {
                        'final_obs': np.array(last, copy=True),
                        'final_info': {}}, slot)
                infos = merger._add_info(infos, {'worker_restarted': True},
                                         slot)
            results[k] = (observations, np.zeros(n), np.zeros(n, np.bool_),
                          np.ones(n, np.bool_), infos, None)
        return results

    def send(self, actions, env_ids=None):
        raise NotImplementedError(
            'a vector env of agents steps all its envs together: use step')

    def recv(self, timeout=None):
        raise NotImplementedError(
            'a vector env of agents steps all its envs together: use step')

    def set_attr(self, name, values):
        raise NotImplementedError(
            'set_attr is not taken by a vector env of agents: call a '
            'method of the envs instead (call)')
