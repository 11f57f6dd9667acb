"""Where and how workers run: samplers, their errors, the ``sampler`` CLI.

``RaySampler`` needs the ``ray`` extra (``pip install
"rollout-sampler[ray]"``); Ray itself is imported only when one is
constructed, so ``import sampler`` works without it.
"""

from sampler.errors import (BrokenSamplerError, SamplerClosedError,
                            SamplerError, SamplerTimeoutError,
                            WorkerCrashedError, WorkerError,
                            WorkerHungError)
from sampler.local_sampler import LocalSampler
from sampler.multiprocessing_sampler import MultiprocessingSampler
from sampler.ray_sampler import RaySampler
from sampler.sampler import Sampler
from workers import EpisodeBatch, MultiAgentBatch, WorkerFactory

__all__ = [
    'BrokenSamplerError',
    'EpisodeBatch',
    'LocalSampler',
    'MultiAgentBatch',
    'MultiprocessingSampler',
    'RaySampler',
    'Sampler',
    'SamplerClosedError',
    'SamplerError',
    'SamplerTimeoutError',
    'WorkerCrashedError',
    'WorkerError',
    'WorkerFactory',
    'WorkerHungError',
]
