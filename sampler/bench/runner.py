"""Measuring sampling throughput: what ``sampler bench`` runs.

Every row (our sampler, and with ``compare`` the alternatives) is set up
once, then the rows are timed call by call in turn: call k of every row
runs before call k+1 of any, so a busy moment on a shared machine falls on
all rows alike, and ratios come from one run. Each call collects at least
``samples`` real transitions with fresh agent parameters, as a training
iteration would; each row's episodes are checked for validity after each
call, outside the timed region.

Figures per row: transitions per second (median, min, max over the calls),
episodes per second, the caller's CPU and the workers' CPU as a share of
one core, discarded episodes, for our rows the waste (the share of env
steps that no batch returned), peak memory of the caller, and the ratio
of the median rate to the best single-process row's. Our rows time
``obtain_samples`` (mode ``episodes``), ``obtain_steps`` (mode
``steps``, enough steps per env for the transitions asked) or
``push_update`` and the next batch of a ``stream`` (mode ``stream``; the
workers may run one batch ahead, and stop at the end of each call so
that they do not run while other rows are timed: what they sent after
the batch is held and comes first in the next call). With ``train_ms``
each of our calls also "trains" that long, which a stream overlaps with
sampling. With
``compare`` and more than one worker, two last rows run that many copies
of the plain loop, and of the largest SyncVectorEnv, in parallel
processes with no
sampler: what the machine allows at that moment (the better of the two),
which on a shared machine can be far below the worker count times one.
"""

import contextlib
import json
import re
import statistics
import time

import cloudpickle
import psutil

from sampler import ray_sampler
from sampler.bench import envs as bench_envs, peers
from sampler.bench.agents import nature_cnn_agent
from sampler.bench.rows import (ParallelLoopsRow, PlainLoopRow, SamplerRow,
                                VectorEnvRow)
from sampler.local_sampler import LocalSampler
from sampler.multiprocessing_sampler import MultiprocessingSampler
from sampler.ray_sampler import RaySampler
from workers import EnvPool, EnvPoolWorker, MLPAgent, RandomAgent

BACKENDS = {'local': LocalSampler, 'multiprocessing': MultiprocessingSampler,
            'ray': RaySampler}
SYNC_ENVS = (1, 4, 8)
ASYNC_ENVS = (2, 4)


def make_agent(kind, env_fn, seed):
    env = env_fn()
    try:
        if kind == 'random':
            return RandomAgent(env.action_space, seed=seed)
        if kind == 'cnn':
            return nature_cnn_agent(env.observation_space, env.action_space,
                                    seed)
        return MLPAgent(env.observation_space, env.action_space, seed=seed)
    finally:
        env.close()


def build_rows(*, env, backend, workers, envs_per_worker, agent, seed,
               max_episode_length, step_cost_us, compare, progress,
               sweep_workers=(), mode='episodes', train_ms=0.0,
               train_sleep=False, baseline=True, skipped=None,
               compare_with=('vector', 'envpool'), step_timeout=None):
    """The rows of a run: ours, one per combination; with ``baseline``
    the plain loop and the limit (plain loops in parallel processes);
    with ``compare`` also gymnasium's vector envs and their limit
    (``'vector'`` in ``compare_with``) and envpool (``'envpool'``; see
    :mod:`sampler.bench.peers`; what was skipped, and why, is appended
    to ``skipped``)."""
    loops = bench_envs.calibrate_loops(step_cost_us)
    env_fn = bench_envs.env_constructor(env, loops)
    the_agent = make_agent(agent, env_fn, seed)

    def copy():
        return cloudpickle.loads(cloudpickle.dumps(the_agent))

    per_worker = envs_per_worker if isinstance(envs_per_worker, tuple) \
        else (envs_per_worker,)
    modes = mode.split(',')
    counts = sweep_workers or (workers,)
    rows = [SamplerRow(BACKENDS[b], copy(), env_fn, workers=n,
                       envs_per_worker=k, seed=seed,
                       max_episode_length=max_episode_length,
                       progress=progress, mode=m, train_ms=train_ms,
                       train_sleep=train_sleep, step_timeout=step_timeout)
            for b in backend.split(',') for m in modes if m != 'vector'
            for n in counts for k in per_worker]
    # Mode vector: our vector env, the policy in this process, its
    # n * k envs on n workers.
    vector_envs = sorted({n * k for n in counts for k in per_worker}) \
        if 'vector' in modes else []
    rows += [VectorEnvRow(kind, n * k, copy(), env_fn, seed, workers=n,
                          step_timeout=step_timeout)
             for n in counts for k in per_worker if 'vector' in modes
             for kind in ('ours', 'ours-send-recv')]
    if compare or baseline:
        rows.append(PlainLoopRow(copy(), env_fn, seed))
    vector = compare and 'vector' in compare_with
    if vector:
        rows += [VectorEnvRow('sync', n, copy(), env_fn, seed)
                 for n in vector_envs or SYNC_ENVS]
        rows += [VectorEnvRow('async', n, copy(), env_fn, seed)
                 for n in vector_envs or ASYNC_ENVS]
        if vector_envs:
            found, notes = peers.sb3_rows(vector_envs, copy, env_fn, seed)
            rows += found
            if skipped is not None:
                skipped += notes
    if compare and 'envpool' in compare_with:
        # envpool with as many envs as each of our rows over its envs,
        # beside its usual counts.
        pool_envs = set(peers.ENVPOOL_ENVS) | {
            n * k for n in counts for k in per_worker if k > 1}
        found, notes = peers.peer_rows(env, copy, seed, step_cost_us,
                                       pool_envs)
        rows += found
        if found:
            # Ours over the same C++ envs: what the sampler adds to them.
            task, options = peers.envpool_task(env)
            pool = EnvPool(task, **options)
            rows += [SamplerRow(BACKENDS[b], copy(), pool, workers=n,
                                envs_per_worker=k, seed=seed,
                                max_episode_length=max_episode_length,
                                progress=progress, mode=m,
                                train_ms=train_ms, train_sleep=train_sleep,
                                worker_class=EnvPoolWorker)
                     for b in backend.split(',') for m in modes
                     if m != 'vector' for n in counts
                     for k in per_worker if k > 1]
        if skipped is not None:
            skipped += notes
    # The limit: copies of the plain loop (and with compare of the
    # largest SyncVectorEnv: the best single-process rows of these tasks)
    # in parallel processes.
    most = max(sweep_workers or (workers,))
    if most > 1 and (compare or baseline):
        rows.append(ParallelLoopsRow(most, PlainLoopRow(copy(), env_fn,
                                                        seed)))
    if most > 1 and vector:
        rows.append(ParallelLoopsRow(most, VectorEnvRow(
            'sync', SYNC_ENVS[-1], copy(), env_fn, seed)))
    return rows, the_agent, loops


def run(*, env='CartPole-v1', backend='multiprocessing', workers=1,
        envs_per_worker=1, agent='mlp', samples=20000, iterations=5,
        max_episode_length=None, seed=0, step_cost_us=0, compare=False,
        progress=None, sweep_workers=(), echo=None, mode='episodes',
        train_ms=0.0, train_sleep=False, baseline=True,
        compare_with=('vector', 'envpool'), step_timeout=None):
    """Time ``iterations`` calls of every row; return every figure.

    ``envs_per_worker`` and ``sweep_workers`` may be tuples, and ``mode``
    a comma-separated list (``episodes``, ``steps``): one row of ours per
    combination.

    Returns:
        dict: the configuration, and ``rows``: one dict per row; rates end
        in ``_per_s``.
    """
    skipped = []
    rows, the_agent, loops = build_rows(
        env=env, backend=backend, workers=workers,
        envs_per_worker=envs_per_worker, agent=agent, seed=seed,
        max_episode_length=max_episode_length, step_cost_us=step_cost_us,
        compare=compare, progress=progress, sweep_workers=sweep_workers,
        mode=mode, train_ms=train_ms, train_sleep=train_sleep,
        baseline=baseline, skipped=skipped, compare_with=compare_with,
        step_timeout=step_timeout)
    with _ray_runtime('ray' in backend.split(',')):
        results, best = time_rows(rows, the_agent.get_params(),
                                  samples=samples, iterations=iterations,
                                  echo=echo)
    return {
        'env': env, 'backend': backend, 'mode': mode, 'workers': workers,
        'train_ms': train_ms, 'train_sleep': train_sleep,
        'envs_per_worker': envs_per_worker, 'agent': agent,
        'samples': samples, 'iterations': iterations,
        'max_episode_length': max_episode_length, 'seed': seed,
        'step_cost_us': step_cost_us, 'step_cost_loops': loops,
        'step_timeout': step_timeout,
        'cpus': len(psutil.Process().cpu_affinity()),
        'best_single_process_row': best,
        'rows': results,
        'skipped': skipped,
    }


@contextlib.contextmanager
def _ray_runtime(needed):
    """One local Ray runtime for every Ray row of a run, unless Ray is
    running already; each sampler would otherwise start and end its own."""
    if not needed:
        yield
        return
    ray = ray_sampler._import_ray()
    if ray.is_initialized():
        yield
        return
    ray.init(include_dashboard=False, logging_level='WARNING')
    try:
        yield
    finally:
        ray.shutdown()


def time_rows(rows, params, *, samples, iterations, echo=None):
    """Set up ``rows``, time ``iterations`` calls of each in turn, close
    them; return (one figures dict per row, the best single-process row's
    name). Each row's data is checked after every call, untimed."""
    calls = [[] for _ in rows]
    try:
        for row in rows:
            row.setup()
            row.call(min(samples, 1000), params)  # warm up caches, imports
            row.check()
        for iteration in range(iterations):
            for row, log in zip(rows, calls):
                log.append(_measure(row, samples, params))
                row.check()
            if echo is not None:
                echo(f'  call {iteration + 1} of {iterations} done for '
                     f'{len(rows)} row(s)')
        results = [_summarise(row, log) for row, log in zip(rows, calls)]
    finally:
        for row in rows:
            row.close()
    singles = [r for r, row in zip(results, rows) if row.single_process]
    best = max(singles, key=lambda r: r['median_transitions_per_s']) \
        if singles else None
    limits = [r['median_transitions_per_s'] for r in results if r['limit']]
    for result in results:
        result['ratio_to_best_single_process'] = (
            result['median_transitions_per_s'] /
            best['median_transitions_per_s'] if best else None)
        result['share_of_limit'] = (
            result['median_transitions_per_s'] / max(limits)
            if limits else None)
    return results, best['name'] if best else None


def _measure(row, samples, params):
    workers = []
    for pid in row.worker_pids():
        try:
            workers.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    workers_cpu = _cpu(workers)
    rss_before = psutil.Process().memory_info().rss
    can_reset = _reset_peak_rss()
    cpu = time.process_time()
    started = time.perf_counter()
    sample = row.call(samples, params)
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu
    peak = _peak_rss() if can_reset else None
    return {'transitions': sample.transitions, 'episodes': sample.episodes,
            'seconds': seconds, 'caller_cpu_s': cpu,
            'workers_cpu_s': _cpu(workers) - workers_cpu if workers else None,
            'batch_bytes': sample.batch_bytes,
            'peak_rss_bytes': peak,
            'call_peak_over_rss_bytes': None if peak is None
            else max(peak - rss_before, 0)}


def _summarise(row, log):
    rates = [c['transitions'] / c['seconds'] for c in log]
    wall = sum(c['seconds'] for c in log)
    result = {
        'name': row.name,
        'single_process': row.single_process,
        'limit': row.limit,
        'median_transitions_per_s': statistics.median(rates),
        'min_transitions_per_s': min(rates),
        'max_transitions_per_s': max(rates),
        'median_episodes_per_s': statistics.median(
            c['episodes'] / c['seconds'] for c in log),
        'caller_cpu_percent': 100 * sum(c['caller_cpu_s'] for c in log) /
        wall,
        'workers_cpu_percent': None,
        'discarded_episodes': row.discarded(),
        'waste': row.waste(),
        'peak_rss_mb': None,
        'calls': log,
    }
    if log[0]['workers_cpu_s'] is not None:
        result['workers_cpu_percent'] = 100 * sum(
            c['workers_cpu_s'] for c in log) / wall
    peaks = [c['peak_rss_bytes'] for c in log if c['peak_rss_bytes']]
    if peaks:
        result['peak_rss_mb'] = max(peaks) / 1e6
    if isinstance(row, VectorEnvRow):
        result['vector_startup_s'] = row.startup_s
    if isinstance(row, SamplerRow):
        result['startup_s'] = row.startup_s
        result['median_mb_per_s'] = statistics.median(
            c['batch_bytes'] / c['seconds'] / 1e6 for c in log)
        extra = [c['call_peak_over_rss_bytes'] / c['batch_bytes']
                 for c in log if c['call_peak_over_rss_bytes'] is not None
                 and c['batch_bytes']]
        result['peak_memory_over_batch_bytes'] = max(extra) if extra \
            else None
    return result


def _cpu(processes):
    total = 0.0
    for proc in processes:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def _reset_peak_rss():
    """Reset this process's peak RSS (Linux: VmHWM); False if we cannot."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def _peak_rss():
    with open('/proc/self/status') as f:
        match = re.search(r'VmHWM:\s+(\d+) kB', f.read())
    return int(match.group(1)) * 1024 if match else None


def format_table(result):
    """The figures as a plain-text table, one line per row."""
    cost = f" +{result['step_cost_us']} us/step" \
        if result['step_cost_us'] else ''
    head = (f"{result['env']}{cost}"
            f" | {result['agent']} agent | {result['iterations']} calls of "
            f"{result['samples']} transitions per row | {result['cpus']} "
            f'CPUs')
    columns = ('row', 'transitions/s', 'min..max', 'episodes/s', 'ratio',
               'of limit', 'caller CPU', 'workers CPU', 'discarded', 'waste',
               'peak MB')
    lines = []
    for r in result['rows']:
        ratio = r['ratio_to_best_single_process']
        share = r.get('share_of_limit')
        lines.append((
            r['name'],
            f"{r['median_transitions_per_s']:,.0f}",
            f"{r['min_transitions_per_s']:,.0f}.."
            f"{r['max_transitions_per_s']:,.0f}",
            f"{r['median_episodes_per_s']:,.0f}",
            '-' if ratio is None else f'{ratio:.2f}x',
            '-' if share is None else f'{share:.0%}',
            f"{r['caller_cpu_percent']:.0f}%",
            '-' if r['workers_cpu_percent'] is None
            else f"{r['workers_cpu_percent']:.0f}%",
            '-' if r['discarded_episodes'] is None
            else str(r['discarded_episodes']),
            '-' if r['waste'] is None else f"{r['waste']:.1%}",
            '-' if r['peak_rss_mb'] is None else f"{r['peak_rss_mb']:.0f}",
        ))
    widths = [max(len(c), *(len(line[i]) for line in lines))
              for i, c in enumerate(columns)]

    def fmt(cells):
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return '  '.join([first] + rest)

    out = [head, fmt(columns), fmt(['-' * w for w in widths])]
    out += [fmt(line) for line in lines]
    if result['best_single_process_row']:
        best = result['best_single_process_row']
        out.append(f"ratio: median transitions/s over the best "
                   f"single-process row's ({best})")
    ours = [r for r in result['rows'] if 'startup_s' in r]
    limits = [r for r in result['rows'] if r['limit']]
    if limits and ours and result['best_single_process_row']:
        limit = max(limits, key=lambda r: r['median_transitions_per_s'])
        best = max(ours, key=lambda r: r['median_transitions_per_s'])
        share = best['median_transitions_per_s'] / \
            limit['median_transitions_per_s']
        out.append(f"limit: {limit['name'][:-len(' (limit)')]} reached "
                   f"{limit['ratio_to_best_single_process']:.2f}x; "
                   f"{best['name']} {share:.0%} of that")
    if result.get('note'):
        out.append(result['note'])
    for r in ours:
        memory = r['peak_memory_over_batch_bytes']
        out.append(f"{r['name']}: start-up {r['startup_s']:.2f} s, "
                   f"{r['median_mb_per_s']:.1f} MB/s of episode data"
                   + ('' if memory is None else
                      f', caller peak memory {memory:.1f}x the batch'))
    vectors = [r for r in result['rows'] if 'vector_startup_s' in r]
    if vectors:
        out.append('start-up (construction and first reset): ' + ', '.join(
            f"{r['name']} {r['vector_startup_s']:.2f} s" for r in vectors))
    for note in result.get('skipped', ()):
        out.append(f'skipped: {note}')
    return '\n'.join(out)


def write_json(result, path):
    with open(path, 'w') as f:
        json.dump(result, f, indent=2)
        f.write('\n')


def plot_sweep(result, path):
    """transitions/s against workers for a ``--sweep-workers`` run."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        msg = ('--plot needs matplotlib: pip install '
               '"rollout-sampler[plot]"')
        raise RuntimeError(msg) from None
    fig, ax = plt.subplots(figsize=(6, 4))
    ours = [r for r in result['rows'] if 'startup_s' in r]
    for backend in dict.fromkeys(r['name'].split(' ')[0] for r in ours):
        line = [r for r in ours if r['name'].startswith(backend + ' ')]
        workers = [int(re.search(r'\((\d+) workers', r['name']).group(1))
                   for r in line]
        ax.errorbar(workers, [r['median_transitions_per_s'] for r in line],
                    yerr=[[r['median_transitions_per_s'] -
                           r['min_transitions_per_s'] for r in line],
                          [r['max_transitions_per_s'] -
                           r['median_transitions_per_s'] for r in line]],
                    marker='o', capsize=3, label=backend)
    for r in result['rows']:
        if r['single_process']:
            ax.axhline(r['median_transitions_per_s'], linestyle=':',
                       linewidth=1, color='grey')
    ax.set_xlabel('workers')
    ax.set_ylabel('transitions per second (median)')
    ax.set_title(f"{result['env']}, {result['agent']} agent")
    ax.set_xticks(workers)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
