"""WorkerFactory: the picklable recipe for a sampler's workers."""

import inspect
import numbers
from typing import Optional, Type

import numpy as np

from workers.default_worker import DefaultWorker
from workers.worker import Worker


class WorkerFactory:
    """Builds worker ``i`` of a sampler, in the process that will run it.

    Workers hold live envs and cannot travel between processes; the factory
    can (it is small and picklable), so backends send it and call
    ``factory(i)`` where the worker runs.

    Args:
        max_episode_length: step cap of every episode, or None.
        n_workers: how many workers the sampler runs.
        seed: root seed; None draws one from the OS (read it back as
            ``factory.seed``).
        worker_class: a :class:`~workers.Worker` subclass.
        worker_args: extra keyword arguments for ``worker_class``, e.g.
            ``{'n_envs': 8}`` for :class:`~workers.VecWorker`.

    Example:
        >>> from workers import VecWorker, WorkerFactory
        >>> factory = WorkerFactory(max_episode_length=200, n_workers=2,
        ...                         seed=1, worker_class=VecWorker,
        ...                         worker_args={'n_envs': 4})
        >>> factory(1).n_envs
        4
    """

    def __init__(self, *, max_episode_length: Optional[int] = None,
                 n_workers: int, seed: Optional[int] = None,
                 worker_class: Type[Worker] = DefaultWorker,
                 worker_args: Optional[dict] = None) -> None:
        if isinstance(n_workers, bool) or not isinstance(
                n_workers, numbers.Integral) or n_workers < 1:
            msg = f'n_workers must be an int >= 1, got {n_workers!r}'
            raise ValueError(msg)
        if seed is None:
            seed = int(np.random.SeedSequence().entropy)
        if isinstance(seed, bool) or not isinstance(
                seed, numbers.Integral) or seed < 0:
            msg = f'seed must be None or an int >= 0, got {seed!r}'
            raise ValueError(msg)
        if max_episode_length is not None and (
                isinstance(max_episode_length, bool)
                or not isinstance(max_episode_length, numbers.Integral)
                or max_episode_length < 1):
            msg = (f'max_episode_length must be None or an int >= 1, got '
                   f'{max_episode_length!r}')
            raise ValueError(msg)
        if not (isinstance(worker_class, type)
                and issubclass(worker_class, Worker)):
            msg = (f'worker_class must be a subclass of workers.Worker, got '
                   f'{worker_class!r}')
            raise TypeError(msg)
        worker_args = dict(worker_args or {})
        try:
            inspect.signature(worker_class).bind(
                seed=0, max_episode_length=None, worker_number=0,
                **worker_args)
        except TypeError as err:
            msg = (f'worker_args {worker_args!r} do not fit '
                   f'{worker_class.__name__}: {err}')
            raise TypeError(msg) from None
        self.max_episode_length = max_episode_length
        self.n_workers = int(n_workers)
        self.seed = int(seed)
        self.worker_class = worker_class
        self.worker_args = worker_args

    def __call__(self, worker_number: int) -> Worker:
        """Build worker ``worker_number`` (0 .. n_workers - 1)."""
        if not 0 <= worker_number < self.n_workers:
            msg = (f'worker_number must be in 0..{self.n_workers - 1}, got '
                   f'{worker_number!r}')
            raise ValueError(msg)
        return self.worker_class(seed=self.seed,
                                 max_episode_length=self.max_episode_length,
                                 worker_number=worker_number,
                                 **self.worker_args)

    def __repr__(self):
        return (f'WorkerFactory(n_workers={self.n_workers}, seed={self.seed},'
                f' max_episode_length={self.max_episode_length}, '
                f'worker_class={self.worker_class.__name__}, '
                f'worker_args={self.worker_args!r})')
