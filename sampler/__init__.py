"""Where and how workers run: samplers, their errors, the ``sampler`` CLI.

``RaySampler`` needs the ``ray`` extra; it is imported lazily so that
``import sampler`` works without Ray.
"""

from sampler.errors import (BrokenSamplerError, SamplerClosedError,
                            SamplerError, SamplerTimeoutError,
                            WorkerCrashedError, WorkerError)
from sampler.local_sampler import LocalSampler
from sampler.multiprocessing_sampler import MultiprocessingSampler
from sampler.sampler import Sampler
from workers import EpisodeBatch, WorkerFactory

__all__ = [
    'BrokenSamplerError',
    'EpisodeBatch',
    'LocalSampler',
    'MultiprocessingSampler',
    'Sampler',
    'SamplerClosedError',
    'SamplerError',
    'SamplerTimeoutError',
    'WorkerCrashedError',
    'WorkerError',
    'WorkerFactory',
]
