"""Multi-agent envs in a worker: PettingZoo's Parallel API, one policy for
every env agent or several mapped to them, in whole episodes or in steps
(segments cut at a call's end, as a single-agent worker's).

Data flow of one env step::

    env.agents ---policy_mapping---> per policy, its live agents
    per policy: stack their observations -> agent.get_actions (one call)
    env.step({agent: action}) -> observations, rewards, terminations,
                                 truncations, infos (dicts by agent)
    per agent: its step goes to its own EpisodeRecord; an agent that
    terminates, truncates or leaves ``env.agents`` ends its segment
    the env episode ends when no agent is left (or at
    max_episode_length): all its agents' segments go to the buffer
    together, under the env episode's id, each with its agent id

A :class:`MultiAgentBuffer` keeps one EpisodeBuffer per policy and builds
a :class:`MultiAgentBatch`: per policy id, an EpisodeBatch whose segments
are single agents' trajectories (``agent_ids``), the agents of one env
episode sharing its ``episode_ids``.
"""

import functools
from typing import Any, Callable, Dict, Optional

import gymnasium
import numpy as np

from workers import _nest
from workers._episode import EpisodeBuffer, EpisodeRecord, copy_nest
from workers.agents import as_agent, batched
from workers.env_update import EnvUpdate
from workers.episode_batch import EpisodeBatch
from workers.worker import PULSE_BEATS, Worker

#: The policy id of a single agent given for every env agent.
SHARED = 'shared'


def is_parallel_env(env):
    """Whether ``env`` is a PettingZoo ``ParallelEnv``, or looks like one
    (its API without subclassing it)."""
    kind = _pettingzoo_kind(env)
    if kind is not None:
        return kind == 'parallel'
    return all(hasattr(env, name) for name in (
        'possible_agents', 'agents', 'step', 'reset')) and \
        callable(getattr(env, 'observation_space', None)) and \
        not hasattr(env, 'agent_iter')


def makes_multi_agent_env(env):
    """Whether ``env`` (an env, a class or a ``functools.partial`` of
    one, as given to a sampler) is, or builds, a PettingZoo env, seen
    without building one: other constructors (a lambda) can't be told."""
    while isinstance(env, functools.partial):
        env = env.func
    if not isinstance(env, type):
        return is_parallel_env(env) or is_aec_env(env)
    if issubclass(env, gymnasium.Env):
        return False
    try:
        from pettingzoo import AECEnv, ParallelEnv
        if issubclass(env, (AECEnv, ParallelEnv)):
            return True
    except ImportError:
        pass
    return hasattr(env, 'possible_agents') and \
        callable(getattr(env, 'observation_space', None))


def is_aec_env(env):
    """Whether ``env`` is a PettingZoo AEC env (agents act in turn)."""
    kind = _pettingzoo_kind(env)
    if kind is not None:
        return kind == 'aec'
    return hasattr(env, 'agent_iter') and hasattr(env, 'last')


def _pettingzoo_kind(env):
    """'parallel' or 'aec' for PettingZoo's own classes, else None."""
    try:
        from pettingzoo import AECEnv, ParallelEnv
    except ImportError:
        return None
    if isinstance(env, ParallelEnv):
        return 'parallel'
    if isinstance(env, AECEnv):
        return 'aec'
    return None


class ParallelEnvUpdate(EnvUpdate):
    """Replace the env with a PettingZoo ``ParallelEnv``: ``env`` itself
    (in another process, an unpickled copy) or what the zero-argument
    callable ``env`` returns."""

    replaces_env = True

    def __init__(self, env):
        if not (is_parallel_env(env) or callable(env)):
            msg = (f'a MultiAgentWorker steps PettingZoo ParallelEnvs: pass '
                   f'one or a zero-argument constructor of one, got {env!r}')
            raise TypeError(msg)
        self.env = env

    def __call__(self, old_env):
        return self.env if is_parallel_env(self.env) else self.env()


def as_parallel_env_update(env):
    """An :class:`~workers.EnvUpdate` as it is, anything else a
    :class:`ParallelEnvUpdate`."""
    return env if isinstance(env, EnvUpdate) else ParallelEnvUpdate(env)


class MultiAgentBatch:
    """Per policy id, an :class:`~workers.EpisodeBatch` of the segments of
    the env agents it acted for.

    ``len()`` is every policy's transitions (agent steps) together, and
    ``n_episodes`` the env episodes whose segments it holds.
    """

    def __init__(self, batches: Dict[Any, EpisodeBatch]):
        self.batches = dict(batches)

    def __getitem__(self, policy_id):
        return self.batches[policy_id]

    def keys(self):
        return self.batches.keys()

    def items(self):
        return self.batches.items()

    def __len__(self):
        return sum(len(b) for b in self.batches.values())

    def _per_segment(self, field, dtype):
        return np.concatenate([getattr(b, field) for b in
                               self.batches.values()] or
                              [np.zeros(0, dtype)])

    @property
    def episode_ids(self) -> np.ndarray:
        """Every segment's env episode id, policy after policy."""
        return self._per_segment('episode_ids', np.int64)

    @property
    def starts(self) -> np.ndarray:
        """Every segment's ``starts``, policy after policy."""
        return self._per_segment('starts', bool)

    @property
    def cut(self) -> np.ndarray:
        """Every segment's ``cut``, policy after policy."""
        return self._per_segment('cut', bool)

    @property
    def versions(self) -> np.ndarray:
        """Every segment's version, policy after policy."""
        return self._per_segment('versions', np.int64)

    @property
    def worker_numbers(self) -> np.ndarray:
        """Every segment's worker, policy after policy."""
        return self._per_segment('worker_numbers', np.int64)

    def check(self) -> None:
        """Check every policy's batch (see ``EpisodeBatch.check``)."""
        for batch in self.batches.values():
            batch.check()

    def episode_stats(self) -> Dict[str, Any]:
        """Per agent and per env episode, the episodes that ended in this
        batch (their steps in earlier batches count too).

        Returns:
            dict: ``'agents'``: per policy id, its batch's
            ``episode_stats()`` (``episode_ids``, ``agent_ids``,
            ``returns``, ``lengths`` of each agent whose segment ended);
            ``'episode_ids'``, ``'returns'`` and ``'n_agents'`` (arrays,
            by env episode): the env episodes none of whose segments in
            this batch is cut, the sum of their agents' returns and how
            many agents that is. For whole-episode calls that is every
            agent of the episode; in steps and streams an agent that
            ended in an earlier batch was counted there.
        """
        per_policy = {policy_id: batch.episode_stats()
                      for policy_id, batch in self.batches.items()}
        ids, cut = self.episode_ids, self.cut
        ended = sorted(set(ids[~cut].tolist()) - set(ids[cut].tolist()))
        returns = dict.fromkeys(ended, 0.0)
        agents = dict.fromkeys(ended, 0)
        for stats in per_policy.values():
            for episode, value in zip(stats['episode_ids'].tolist(),
                                      stats['returns'].tolist()):
                if episode in returns:
                    returns[episode] += value
                    agents[episode] += 1
        return {'agents': per_policy,
                'episode_ids': np.array(ended, dtype=np.int64),
                'returns': np.array([returns[e] for e in ended],
                                    dtype=np.float64),
                'n_agents': np.array([agents[e] for e in ended],
                                     dtype=np.int64)}

    @property
    def n_episodes(self) -> int:
        """The env episodes whose segments this batch holds."""
        return len(set(self.episode_ids.tolist()))

    @classmethod
    def concatenate(cls, *batches: 'MultiAgentBatch',
                    missing_infos: str = 'raise') -> 'MultiAgentBatch':
        """One batch: per policy, its batches' segments in order."""
        by_policy = {}
        for batch in batches:
            for policy_id, part in batch.items():
                by_policy.setdefault(policy_id, []).append(part)
        return cls({policy_id: EpisodeBatch.concatenate(
            *parts, missing_infos=missing_infos)
            for policy_id, parts in by_policy.items()})

    def __eq__(self, other):
        if not isinstance(other, MultiAgentBatch):
            return NotImplemented
        return self.batches == other.batches

    __hash__ = None

    def __repr__(self):
        parts = ', '.join(f'{policy_id!r}: {batch!r}'
                          for policy_id, batch in self.batches.items())
        return f'<MultiAgentBatch {{{parts}}}>'


class MultiAgentBuffer:
    """What a :class:`MultiAgentWorker` completed: per policy an
    :class:`~workers._episode.EpisodeBuffer`; ``n_episodes`` counts env
    episodes, ``transitions`` agent steps."""

    def __init__(self):
        self.buffers = {}
        self.n_episodes = 0

    @property
    def transitions(self):
        return sum(b.transitions for b in self.buffers.values())

    def add_episode(self, segments, version, worker_number):
        """The segments of one env episode (its end, or the part a steps
        call ends; counted as one): ``segments`` holds ``(policy id,
        EpisodeRecord, last observation, terminated, truncated, cut)`` per
        agent."""
        for policy_id, record, last, terminated, truncated, cut in segments:
            buffer = self.buffers.get(policy_id)
            if buffer is None:
                buffer = self.buffers[policy_id] = EpisodeBuffer()
            buffer.add(record, last, terminated, truncated, version,
                       worker_number, cut=cut)
        self.n_episodes += 1

    def to_batch(self, observations_out=None):
        """One :class:`MultiAgentBatch` of all held; the buffer empties.
        (``observations_out`` is for an EpisodeBuffer's shared rows, which
        multi-agent batches do not use: it must be None.)"""
        if observations_out is not None:
            raise ValueError('a MultiAgentBuffer writes no shared rows')
        buffers, self.buffers = self.buffers, {}
        self.n_episodes = 0
        return MultiAgentBatch({policy_id: buffer.to_batch()
                                for policy_id, buffer in buffers.items()
                                if buffer.n_episodes})


class MultiAgentWorker(Worker):
    """Runs one PettingZoo ``ParallelEnv`` and one or several policies.

    The agent given (``set_agent``) is one agent for every env agent
    (parameter sharing: all their observations go to one ``get_actions``
    call per step, policy id :data:`SHARED`), or a dict ``{policy id:
    agent}`` with ``policy_mapping(env agent id) -> policy id``. Params
    (``set_agent_params``) are a dict by policy id, or one value for a
    single shared agent; a policy left out of the dict keeps its own
    (frozen, as an older copy in self-play is).

    Args:
        seed, max_episode_length, worker_number: as every worker's;
            ``max_episode_length`` counts env steps.
        policy_mapping: env agent id -> policy id, for a dict of agents.
    """

    def __init__(self, *, seed, max_episode_length, worker_number,
                 policy_mapping: Optional[Callable[[Any], Any]] = None):
        super().__init__(seed=seed, max_episode_length=max_episode_length,
                         worker_number=worker_number)
        self.env = None
        self.policy_mapping = policy_mapping
        self.agents = {}  # policy id -> agent
        self._reset_seed = None
        self._env_is_new = True
        self._episode = None  # the running env episode (see _start)

    # What a sampler checks in the caller ----------------------------------

    @classmethod
    def env_update_of(cls, env, what='env'):
        if isinstance(env, EnvUpdate) or is_parallel_env(env) or \
                (callable(env) and not isinstance(env, str)):
            return as_parallel_env_update(env)
        hint = ' It is an AEC env: pass pettingzoo.utils.conversions.' \
            'aec_to_parallel(env) instead.' if is_aec_env(env) else ''
        msg = (f'{what} must be a PettingZoo ParallelEnv, a zero-argument '
               f'constructor of one or an EnvUpdate for a multi-agent '
               f'worker, got {env!r}.{hint}')
        raise TypeError(msg)

    @classmethod
    def check_agent(cls, agent, what='agent'):
        if isinstance(agent, dict):
            if not agent:
                raise TypeError(f'{what} is an empty dict of policies')
            for policy_id, one in agent.items():
                as_agent(one, what=f'{what}[{policy_id!r}]')
        else:
            as_agent(agent, what=what)

    @staticmethod
    def is_agent(update):
        if isinstance(update, dict):
            return bool(update) and all(hasattr(a, 'get_action')
                                        for a in update.values())
        return hasattr(update, 'get_action')

    @staticmethod
    def takes_params(agent):
        if isinstance(agent, dict):
            return any(hasattr(a, 'set_params') for a in agent.values())
        return hasattr(agent, 'set_params')

    def new_buffer(self):
        return MultiAgentBuffer()

    def begin_steps(self, steps_per_env):
        self._check_ready(self.env)
        super().begin_steps(steps_per_env)

    def _take_steps(self, buffer, n_steps):
        for _ in range(n_steps):
            if self._episode is None:
                self._start()
            if self._step():
                self._end_episode(buffer)

    def end_steps(self, buffer):
        """The agents that ended since the last call's end go to
        ``buffer`` as they are, the running ones' segments cut (they go
        on as new segments of the same agents at the next steps)."""
        self._steps_left = 0
        episode = self._episode
        if episode is None:
            return
        segments, episode['ended'] = episode['ended'], []
        records, last = episode['records'], episode['obs']
        for env_agent, (policy_id, record) in list(records.items()):
            if len(record):
                segments.append((policy_id, record, last[env_agent], False,
                                 False, True))
                records[env_agent] = (policy_id, record.continuation())
        if segments:
            buffer.add_episode(segments, self.version, self._worker_number)

    def _end_episode(self, buffer):
        episode, self._episode = self._episode, None
        if episode['ended']:
            buffer.add_episode(episode['ended'], self.version,
                               self._worker_number)

    # Agents --------------------------------------------------------------

    def set_agent(self, agent):
        self.error_site = 'setting the agent'
        if isinstance(agent, dict):
            if self.policy_mapping is None:
                msg = (f'a dict of agents (policies {sorted(agent, key=str)}) '
                       f'needs policy_mapping=callable(env agent id) -> '
                       f'policy id')
                raise ValueError(msg)
            self.agents = {policy_id: as_agent(a, f'agents[{policy_id!r}]')
                           for policy_id, a in agent.items()}
        else:
            self.agents = {SHARED: as_agent(agent)}
        self.agent = self.agents
        self.error_site = None
        self._on_agent_changed()

    def update_agent(self, agent_update):
        """As every worker's; a dict of agents (each with
        ``get_action``) replaces the policies, a dict of anything else
        is parameters by policy id."""
        if self.is_agent(agent_update):
            self.set_agent(agent_update)
        else:
            super().update_agent(agent_update)

    def set_agent_params(self, params):
        self.error_site = 'agent.set_params'
        if not isinstance(params, dict) or SHARED in self.agents and \
                len(self.agents) == 1:
            params = {policy_id: params for policy_id in self.agents}
        for policy_id, value in params.items():
            agent = self.agents.get(policy_id)
            if agent is None:
                msg = (f'parameters for policy {policy_id!r}, which is not '
                       f'one of {sorted(self.agents, key=str)}')
                raise KeyError(msg)
            set_params = getattr(agent, 'set_params', None)
            if set_params is None:
                msg = (f'the agent of policy {policy_id!r} has no '
                       f'set_params, so it cannot take parameters')
                raise TypeError(msg)
            set_params(value)
        self.error_site = None
        self._on_agent_changed()

    def policy_of(self, env_agent):
        """The policy that acts for ``env_agent``."""
        if self.policy_mapping is None:
            return SHARED
        policy_id = self.policy_mapping(env_agent)
        if policy_id not in self.agents:
            msg = (f'policy_mapping({env_agent!r}) returned {policy_id!r}, '
                   f'which is not one of the policies '
                   f'{sorted(self.agents, key=str)}')
            raise KeyError(msg)
        return policy_id

    # Env -----------------------------------------------------------------

    @staticmethod
    def _as_env_update(env_update):
        return as_parallel_env_update(env_update)

    def update_env(self, env_update):
        update = self._as_env_update(env_update)
        self.error_site = 'env update'
        env = update(self.env)
        if not is_parallel_env(env):
            hint = (' It is an AEC env: pass pettingzoo.utils.conversions.'
                    'aec_to_parallel(env) instead' if is_aec_env(env)
                    else '')
            msg = (f'a MultiAgentWorker steps PettingZoo ParallelEnvs, got '
                   f'{env!r}.{hint}')
            raise TypeError(msg)
        if env is not self.env and self.env is not None:
            self.error_site = 'env.close'
            self.env.close()
        self.error_site = None
        if env is not self.env:
            self._env_is_new = True
        self.env = env
        self._episode = None

    @property
    def env_spaces(self):
        """Per policy, ``(observation_space, action_space)`` of its env
        agents (they must agree)."""
        if self.env is None or not self.agents:
            return None
        spaces = {}
        for env_agent in self.env.possible_agents:
            policy_id = self.policy_of(env_agent)
            pair = (self.env.observation_space(env_agent),
                    self.env.action_space(env_agent))
            seen = spaces.setdefault(policy_id, (pair, env_agent))
            if seen[0] != pair:
                msg = (f'env agents {seen[1]!r} and {env_agent!r} both act '
                       f'under policy {policy_id!r} but have the spaces '
                       f'{seen[0]} and {pair}; one policy needs one '
                       f'observation and action space')
                raise ValueError(msg)
        return {policy_id: pair for policy_id, (pair, _) in spaces.items()}

    # Rounds --------------------------------------------------------------

    def _n_seeds(self):
        # The round's seeds: one for the env, one per policy (the agent
        # dict is not seeded as one agent).
        return 2 + len(self.agents)

    def _on_new_round(self, env_seeds, reseed_envs):
        if reseed_envs or self._env_is_new:
            self._reset_seed = env_seeds[0]
        for seed, (policy_id, agent) in zip(env_seeds[1:],
                                            sorted(self.agents.items(),
                                                   key=lambda p: str(p[0]))):
            if hasattr(agent, 'seed'):
                self.error_site = 'agent.seed'
                agent.seed(seed)
        self.error_site = None

    def abandon_episodes(self):
        dropped = 0
        if self._episode is not None:
            dropped = sum(len(r) for _, r in
                          self._episode['records'].values()) + \
                sum(len(s[1]) for s in self._episode['ended'])
        self._episode = None
        return dropped

    @property
    def in_progress(self):
        return int(self._episode is not None)

    def rollout_into(self, buffer, max_starts=None):
        """Run until the env episode ends; add its agents' segments to
        ``buffer`` (a :class:`MultiAgentBuffer`). Returns how many env
        episodes it started (0 or 1)."""
        self._check_ready(self.env)
        started = 0
        if self._episode is None:
            if max_starts == 0:
                return 0
            self._start()
            started = 1
        while not self._step():
            pass
        self._end_episode(buffer)
        return started

    def _start(self):
        self.error_site = 'env.reset'
        observations, infos = self.env.reset(seed=self._reset_seed)
        self.pulse[PULSE_BEATS] += 1
        self._reset_seed = None
        self._env_is_new = False
        self.error_site = None
        episode_id = self._new_episode_id()
        # records and obs: of the agents in it now; ended: the segments
        # of agents that ended, not yet in a buffer; gone: every agent
        # that ended (it does not come back in the same episode).
        self._episode = {'id': episode_id, 't': 0, 'records': {},
                         'obs': {}, 'ended': [], 'gone': set()}
        for env_agent in self.env.agents:
            self._join(env_agent, observations[env_agent],
                       infos.get(env_agent, {}))

    def _join(self, env_agent, observation, info):
        """``env_agent`` enters the running episode (at its reset, or
        later) with this observation."""
        record = EpisodeRecord(dict(info), episode_id=self._episode['id'],
                               agent_id=env_agent)
        self._episode['records'][env_agent] = (self.policy_of(env_agent),
                                               record)
        self._episode['obs'][env_agent] = copy_nest(observation)

    def _step(self):
        """One env step; True once the env episode has ended."""
        episode = self._episode
        records, last = episode['records'], episode['obs']
        acting = [a for a in self.env.agents if a in records]
        by_policy = {}
        for env_agent in acting:
            by_policy.setdefault(records[env_agent][0], []).append(env_agent)
        actions, agent_infos = {}, {}
        for policy_id, group in by_policy.items():
            self.error_site = 'agent.get_actions'
            batch = _nest.stack([last[a] for a in group])
            acts, infos = batched(self.agents[policy_id])(batch)
            self.error_site = None
            for k, env_agent in enumerate(group):
                actions[env_agent] = _nest.index(acts, k)
                agent_infos[env_agent] = {key: _nest.index(value, k)
                                          for key, value in infos.items()}
        self.pulse[PULSE_BEATS] += 1
        self.error_site = 'env.step'
        observations, rewards, terminations, truncations, infos = \
            self.env.step(actions)
        self.pulse[PULSE_BEATS] += 1
        self.env_steps += 1
        self.error_site = None
        episode['t'] += 1
        capped = self._max_episode_length is not None and \
            episode['t'] >= self._max_episode_length
        still = set(self.env.agents)
        for env_agent in acting:
            policy_id, record = records[env_agent]
            record.observations.append(last[env_agent])
            record.actions.append(actions[env_agent])
            record.rewards.append(float(rewards.get(env_agent, 0.0)))
            record.env_infos.append(dict(infos.get(env_agent, {})))
            record.agent_infos.append(agent_infos[env_agent])
            obs = observations.get(env_agent, last[env_agent])
            last[env_agent] = copy_nest(obs)
            terminated = bool(terminations.get(env_agent, False))
            truncated = bool(truncations.get(env_agent, False)) or \
                (capped and not terminated) or \
                (env_agent not in still and not terminated)
            if terminated or truncated:
                episode['ended'].append((policy_id, record, last[env_agent],
                                         terminated, truncated, False))
                episode['gone'].add(env_agent)
                del records[env_agent]
        for env_agent in self.env.agents:
            if env_agent not in records and env_agent in observations and \
                    env_agent not in episode['gone']:
                # An agent that appeared during the episode.
                self._join(env_agent, observations[env_agent],
                           infos.get(env_agent, {}))
        return not records or capped and self._end_all()

    def _end_all(self):
        """At max_episode_length: every agent still in is truncated."""
        episode = self._episode
        for env_agent, (policy_id, record) in list(
                episode['records'].items()):
            if len(record):
                episode['ended'].append((policy_id, record,
                                         episode['obs'][env_agent], False,
                                         True, False))
        episode['records'].clear()
        return True

    def shutdown(self):
        if self.env is not None:
            self.env.close()
            self.env = None
        self._episode = None
