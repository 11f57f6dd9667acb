"""``sampler bench``: sampling throughput, ours against the alternatives.

A subpackage of its own; the library imports nothing from it.

- :mod:`sampler.bench.runner`: building the rows, timing them call by
  call in turn, the table and the JSON;
- :mod:`sampler.bench.rows`: the rows (our samplers, the plain loop,
  gymnasium's vector envs, plain loops in parallel: the limit);
- :mod:`sampler.bench.peers`: rows of peers that need installs of their
  own (envpool), skipped with one line saying what to install;
- :mod:`sampler.bench.envs`: the envs (a step-cost wrapper, an 84x84x3
  image env, Atari with the standard preprocessing).
"""

from sampler.bench.rows import (EpisodeRecorder, ParallelLoopsRow,
                                PlainLoopRow, Row, Sample, SamplerRow,
                                VectorEnvRow)
from sampler.bench.runner import (build_rows, format_table, make_agent,
                                  run, time_rows, write_json)

#: What scripts that add rows of their own (scripts/bench_peers.py) use.
__all__ = ['EpisodeRecorder', 'ParallelLoopsRow', 'PlainLoopRow', 'Row',
           'Sample', 'SamplerRow', 'VectorEnvRow', 'build_rows',
           'format_table', 'make_agent', 'run', 'time_rows', 'write_json']
