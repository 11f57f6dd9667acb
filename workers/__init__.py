"""What runs episodes, in any process: episode batches, agents, workers.

This package knows nothing of processes or queues; :mod:`sampler` decides
where workers run.
"""

from workers._episode import EpisodeBuffer
from workers.agents import CallableAgent, MLPAgent, RandomAgent
from workers.default_worker import DefaultWorker
from workers.env_pool_worker import EnvPoolWorker
from workers.env_update import EnvPool, EnvUpdate, NewEnvUpdate, \
    SetTaskUpdate
from workers.gae import compute_gae
from workers._multi_agent import MultiAgentBatch, MultiAgentWorker
from workers.torch_agent import TorchAgent
from workers.episode_batch import EpisodeBatch
from workers.vec_worker import VecWorker
from workers.worker import Worker
from workers.worker_factory import WorkerFactory

__all__ = [
    'CallableAgent',
    'DefaultWorker',
    'EnvPool',
    'EnvPoolWorker',
    'EnvUpdate',
    'EpisodeBatch',
    'EpisodeBuffer',
    'MLPAgent',
    'MultiAgentBatch',
    'MultiAgentWorker',
    'NewEnvUpdate',
    'RandomAgent',
    'SetTaskUpdate',
    'TorchAgent',
    'VecWorker',
    'Worker',
    'WorkerFactory',
    'compute_gae',
]
