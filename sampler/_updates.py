"""What the workers are sent: every agent, env and update the sampler is
given, checked and pickled once in the caller (each pickled object an
:class:`~sampler._protocol.Update`, its kind decided here), and per
worker the recipe that rebuilds it as it is now."""

import warnings

from sampler import _pickling
from sampler._protocol import Update, UpdateKind

#: Env updates a restart recipe holds before it warns (see WorkerRecipe).
RECIPE_WARN_AT = 100


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


class Updates:
    """The updates of a sampler's workers: their first agents and envs,
    and the ones each call brings, checked and pickled in the caller
    before any worker sees them; the recipe that rebuilds each worker.

    Args:
        n_workers: how many workers there are.
        worker_class: their class (it checks env updates).
        agents, envs: as the sampler was given them.
    """

    def __init__(self, n_workers, worker_class, agents, envs):
        self.n_workers = n_workers
        self._worker_class = worker_class
        agent_list = self._per_worker(agents, 'agents')
        for i, agent in enumerate(agent_list):
            worker_class.check_agent(agent, self._name('agents', agents, i))
        env_list = self._per_worker(envs, 'envs')
        env_updates = [worker_class.env_update_of(
            e, self._name('envs', envs, i)) for i, e in enumerate(env_list)]
        for i, update in enumerate(env_updates):
            worker_class.check_env_update(update,
                                          self._name('envs', envs, i))
        agent_blobs = self._pickle_each('agents', agents, agent_list,
                                        UpdateKind.AGENT)
        env_blobs = self._pickle_each('envs', envs, env_updates,
                                      UpdateKind.ENV, originals=env_list)
        self._can_set_params = [worker_class.takes_params(a)
                                for a in agent_list]
        #: Per worker, the WorkerRecipe that rebuilds it.
        self.recipes = [WorkerRecipe(a, e)
                        for a, e in zip(agent_blobs, env_blobs)]

    def take(self, agent_update, env_update):
        """Check and pickle a call's (or push's) updates and record them
        for restarts; per worker, ``(env Update, agent Update)``, each None
        if not updated. Raises before anything changes if one is bad."""
        agents, can_set_params = self._prepare_agent_update(agent_update)
        envs, env_objects = self._prepare_env_update(env_update)
        # Every argument is accepted: only now may the state change.
        self._can_set_params = can_set_params
        updates = []
        for i, recipe in enumerate(self.recipes):
            agent = None if agents is None else agents[i]
            env = None if envs is None else envs[i]
            recipe.record(agent, env, None if envs is None else env_objects[i])
            updates.append((env, agent))
        return updates

    def _prepare_agent_update(self, update):
        if update is None:
            return None, self._can_set_params
        items = self._per_worker(update, 'agent_update')
        kinds = []
        for i, item in enumerate(items):
            if self._worker_class.is_agent(item):
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
        can_set_params = [self._worker_class.takes_params(item)
                          if kind is UpdateKind.AGENT
                          else old for item, kind, old in
                          zip(items, kinds, self._can_set_params)]
        return pickled, can_set_params

    def _prepare_env_update(self, update):
        if update is None:
            return None, None
        items = self._per_worker(update, 'env_update')
        objects = [self._worker_class.env_update_of(
            e, self._name('env_update', update, i))
            for i, e in enumerate(items)]
        for i, item in enumerate(objects):
            self._worker_class.check_env_update(
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
