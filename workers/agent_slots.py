"""AgentSlotsWorker: PettingZoo envs stepped for actions the caller sends,
every env agent a slot of a vector env (``sampler.vector.
MultiAgentVectorEnv``), for parameter-sharing loops whose policy stays in
the learner.

Env ``j``'s agents hold slots ``j * A .. j * A + A - 1`` (A: its
``possible_agents``, in their order), as SuperSuit's
``pettingzoo_env_to_vec_env_v1`` + ``concat_vec_envs_v1`` lay them out.
An agent that is not in the env (it left, or has not come yet) keeps its
slot, as SuperSuit's ``black_death`` does: its observation is zeros, its
reward 0, its flags False and its action ignored; ``infos["active"]``
says, per slot, whether the agent is in the env (its observation is real
and its next action will be used), for a learner that masks the others
out.

A slot's flags are its agent's: ``terminated`` where the env says so,
``truncated`` where the env says so or the agent left without a flag.
The env's episode ends when no agent is left in it (or all of them ended
at once); the env is then reset as the autoreset mode says:

    next_step  the next step resets it: every slot's action is ignored,
               its reward 0, its flags False, its info the reset's
    same_step  it is reset at once; the step's observations and infos go
               out as ``final_obs`` and ``final_info`` of its slots
"""

import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import create_empty_array

from workers._multi_agent import is_aec_env, is_parallel_env
from workers.env_stepper import (STACKING_SPACES, EnvStepWorker,
                                 InfoMerger, batch_infos)


class AgentSlotsWorker(EnvStepWorker):
    """Steps its PettingZoo ``ParallelEnv``\\ s, one slot per env agent
    (see the module's docstring). ``observation_space`` and
    ``action_space`` of an env (``call_envs``) are the spaces every one
    of its agents has; agents with other spaces are refused (pad them,
    e.g. with SuperSuit's ``pad_observations_v0``).

    Args:
        seed, max_episode_length, worker_number: as every worker's (the
            envs end their episodes themselves).
        autoreset_mode: NEXT_STEP or SAME_STEP (a vector env of agents
            resets an env when its agents are all gone, which a learner
            cannot ask for slot by slot: DISABLED is refused).
        merge_infos: must be True: the slots' infos are merged as
            gymnasium merges a vector env's.
    """

    def __init__(self, *, seed, max_episode_length, worker_number,
                 autoreset_mode=AutoresetMode.NEXT_STEP, merge_infos=True):
        if not merge_infos:
            raise ValueError('an AgentSlotsWorker merges its slots\' infos')
        super().__init__(seed=seed, max_episode_length=max_episode_length,
                         worker_number=worker_number,
                         autoreset_mode=autoreset_mode, merge_infos=True)
        if self.autoreset_mode is AutoresetMode.DISABLED:
            msg = ('a vector env of PettingZoo agents resets an env when '
                   'its episode ends: autoreset_mode must be NEXT_STEP or '
                   'SAME_STEP, not DISABLED')
            raise ValueError(msg)
        self.agent_ids = []  # the slots of each env, in order
        self._spaces = {}

    @property
    def n_slots(self):
        return len(self.envs) * len(self.agent_ids)

    def update_env(self, env_update):
        self.agent_ids, self._spaces = [], {}  # the new envs' own
        super().update_env(env_update)

    def _check_built(self, env, index):
        if not is_parallel_env(env):
            hint = (' It is an AEC env: return pettingzoo.utils.'
                    'conversions.aec_to_parallel(env) instead.'
                    if is_aec_env(env) else '')
            msg = (f'env_fns[{index}] returned {env!r}, not a PettingZoo '
                   f'ParallelEnv.{hint}')
            raise TypeError(msg)
        self._check_agents(env, index)

    def _on_built(self):
        n = len(self.envs)
        self._stacks = type(self._spaces['observation_space']) in \
            STACKING_SPACES
        self._ended = [False] * n
        self._observations = [None] * n
        self._live = [frozenset()] * n

    def _check_agents(self, env, index):
        agents = list(env.possible_agents)
        if not self.agent_ids:
            self.agent_ids = agents
        elif agents != self.agent_ids:
            msg = (f'env {index} has the agents {agents}, env '
                   f'{self.first_index} {self.agent_ids}: every env of a '
                   f'vector env of agents must have the same '
                   f'possible_agents, in the same order')
            raise ValueError(msg)
        for name in ('observation_space', 'action_space'):
            first = getattr(env, name)(agents[0])
            self._spaces.setdefault(name, first)
            for agent in agents:
                space = getattr(env, name)(agent)
                if space != self._spaces[name]:
                    msg = (f'env {index}: agent {agent!r} has the {name} '
                           f'{space}, agent {agents[0]!r} {first}; the '
                           f'agents of a vector env share one policy and '
                           f'need one space (pad them, e.g. with '
                           f'SuperSuit\'s pad_observations_v0 and '
                           f'pad_action_space_v0)')
                    raise ValueError(msg)

    def _env_attr(self, env, name):
        if name in self._spaces:
            return self._spaces[name]  # every agent's
        return getattr(env, name)

    # The calls -----------------------------------------------------------

    def reset_envs(self, seeds=None, options=None, mask=None):
        """Reset the envs (those ``mask`` holds True for, default all)
        with ``seeds`` (one per env) and ``options`` (one dict for all,
        or a list of one per env). Returns ``(observations, infos)`` per
        slot: the observations one array where they stack, the infos
        merged as gymnasium merges a vector env's (``infos["active"]``:
        see the module)."""
        n = len(self.envs)
        seeds = [None] * n if seeds is None else list(seeds)
        mask = [True] * n if mask is None else [bool(m) for m in mask]
        if not isinstance(options, list):
            options = [options] * n
        if not len(seeds) == len(mask) == len(options) == n:
            msg = (f'reset_envs got {len(seeds)} seeds, {len(options)} '
                   f'options and a mask of {len(mask)} for {n} envs')
            raise ValueError(msg)
        infos = [None] * self.n_slots
        for j in range(n):
            if mask[j]:
                self._at('env.reset', self.first_index + j)
                observations, env_infos = self.envs[j].reset(
                    seed=seeds[j], options=options[j])
                self._reset_slots(j, observations, env_infos, infos)
        self._done()
        return self._rows(), self._merged(infos, None)

    def _reset_slots(self, j, observations, env_infos, infos):
        env = self.envs[j]
        self._observations[j] = observations
        self._live[j] = frozenset(env.agents)
        self._ended[j] = False
        first = j * len(self.agent_ids)
        for p, agent in enumerate(self.agent_ids):
            infos[first + p] = dict(env_infos.get(agent, {}))

    def step_envs(self, actions, indices=None):
        """Step every env with its slots' actions (one per slot, in slot
        order; ``indices`` must be None: a vector env of agents steps all
        its envs together). Returns ``(observations, rewards, terminated,
        truncated, infos, None)`` per slot, the infos merged (see
        :meth:`reset_envs`)."""
        if indices is not None:
            msg = ('a vector env of agents steps all its envs together: '
                   'step_envs takes no indices')
            raise ValueError(msg)
        n_agents = len(self.agent_ids)
        if len(actions) != self.n_slots:
            msg = (f'step_envs got {len(actions)} actions for '
                   f'{self.n_slots} slots ({len(self.envs)} envs of '
                   f'{n_agents} agents)')
            raise ValueError(msg)
        rewards = np.zeros(self.n_slots, np.float64)
        terminated = np.zeros(self.n_slots, np.bool_)
        truncated = np.zeros(self.n_slots, np.bool_)
        infos = [None] * self.n_slots
        finals = [None] * self.n_slots
        same_step = self.autoreset_mode is AutoresetMode.SAME_STEP
        for j, env in enumerate(self.envs):
            index, first = self.first_index + j, j * n_agents
            if self._ended[j]:  # next_step: this step resets it
                self._at('env.reset', index)
                self._reset_slots(j, *env.reset(), infos)
                continue
            live = self._live[j]
            sent = {agent: actions[first + p]
                    for p, agent in enumerate(self.agent_ids)
                    if agent in live}
            self._at('env.step', index)
            observations, rs, terms, truncs, env_infos = env.step(sent)
            self.env_steps += 1
            still = set(env.agents)
            ended = True
            for p, agent in enumerate(self.agent_ids):
                slot = first + p
                rewards[slot] = rs.get(agent, 0.0)
                term = bool(terms.get(agent, False))
                trunc = bool(truncs.get(agent, False)) or (
                    agent in live and agent not in still and not term)
                terminated[slot], truncated[slot] = term, trunc
                infos[slot] = dict(env_infos.get(agent, {}))
                if agent in still and not (term or trunc):
                    ended = False
            # Agents that ended here keep their last observation for
            # this step's rows; from the next step on they are zeros.
            self._observations[j] = {
                agent: obs for agent, obs in observations.items()
                if agent in still or agent in live}
            self._live[j] = frozenset(still)
            if not ended:
                continue
            if same_step:
                rows = self._env_rows(j)
                for p in range(n_agents):
                    finals[first + p] = (rows[p], infos[first + p])
                self._at('env.reset', index)
                reset_infos = [None] * self.n_slots
                self._reset_slots(j, *env.reset(), reset_infos)
                for p in range(n_agents):
                    infos[first + p] = reset_infos[first + p]
            else:
                self._ended[j] = True
                self._live[j] = frozenset()
        self._done()
        return (self._rows(), rewards, terminated, truncated,
                self._merged(infos, finals), None)

    # Rows ----------------------------------------------------------------

    def _env_rows(self, j):
        """Env ``j``'s slots' observations: each agent's last one, zeros
        (of the space's empty array) for an agent that has none."""
        observations = self._observations[j] or {}
        space = self._spaces['observation_space']
        rows = []
        for agent in self.agent_ids:
            obs = observations.get(agent)
            rows.append(create_empty_array(space, 1)[0] if obs is None
                        else obs)
        return rows

    def _rows(self):
        rows = [row for j in range(len(self.envs))
                for row in self._env_rows(j)]
        if self._stacks:
            try:
                return np.stack(rows)
            except (ValueError, TypeError):
                pass
        return rows

    def _merged(self, infos, finals):
        """The slots' infos merged over them, with ``active``."""
        merged = batch_infos(InfoMerger(self.n_slots), infos, finals)
        active = np.array([agent in live for live in self._live
                           for agent in self.agent_ids], np.bool_)
        merged['active'] = active
        merged['_active'] = np.ones(self.n_slots, np.bool_)
        return merged

    def share_rows(self, shared):
        raise ValueError('a vector env of agents sends its observations in '
                         'its replies')
