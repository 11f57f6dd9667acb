"""The ``sampler`` command line (also ``python -m sampler``)."""

import click
from click.core import ParameterSource

from sampler.bench import envs as _envs, runner as _bench
from sampler.sampler import available_cpus
from workers.env_update import check_env_id


@click.group()
@click.version_option(package_name='rollout-sampler')
def main():
    """rollout-sampler: collect RL experience fast, and measure it."""


def _env_id(ctx, param, value):
    try:
        if _envs.is_atari(value):
            _envs.register_atari()
        check_env_id(value)
    except ImportError as err:
        raise click.BadParameter(str(err)) from None
    except ValueError as err:
        raise click.BadParameter(str(err)) from None
    return value


def _counts(ctx, param, value):
    if value is None:
        return ()
    try:
        counts = tuple(int(v) for v in value.split(','))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        msg = f'expected counts >= 1 like 1,2,4, got {value!r}'
        raise click.BadParameter(msg)
    return counts


def _backends(ctx, param, value):
    names = [v.strip() for v in value.split(',')]
    unknown = [n for n in names if n not in _bench.BACKENDS]
    if unknown:
        msg = (f'{", ".join(map(repr, unknown))} is not one of '
               f'{", ".join(sorted(_bench.BACKENDS))}')
        raise click.BadParameter(msg)
    return ','.join(dict.fromkeys(names))


def _families(value):
    names = tuple(dict.fromkeys(v.strip() for v in value.split(',')))
    unknown = [n for n in names if n not in ('vector', 'envpool')]
    if unknown or not names:
        msg = (f'expected vector, envpool or both, got {value!r}')
        raise click.BadParameter(msg)
    return names


def _modes(ctx, param, value):
    names = [v.strip() for v in value.split(',')]
    unknown = [n for n in names
               if n not in ('episodes', 'steps', 'stream', 'vector')]
    if unknown:
        msg = (f'{", ".join(map(repr, unknown))} is not one of episodes, '
               f'steps, stream, vector')
        raise click.BadParameter(msg)
    return ','.join(dict.fromkeys(names))


def _comparable(mode, envs_per_worker):
    """Ours as the alternatives run where the command line leaves it
    open: vector envs step fixed-length segments of several envs, so the
    fair rows of ours are obtain_steps with 1 and 8 envs per worker, not
    whole episodes of one env. Returns them and a line saying what was
    chosen (None if nothing was)."""
    ctx = click.get_current_context()
    chosen = []
    if 'vector' in mode.split(','):
        return mode, envs_per_worker, None  # the vector envs' own task
    if ctx.get_parameter_source('mode') is ParameterSource.DEFAULT:
        mode = 'steps'
        chosen.append('--mode steps')
    if ctx.get_parameter_source('envs_per_worker') is \
            ParameterSource.DEFAULT:
        envs_per_worker = (1, 8)
        chosen.append('--envs-per-worker 1,8')
    if not chosen:
        return mode, envs_per_worker, None
    note = (f"compare: ours run with {' '.join(chosen)}, as the vector "
            f'envs step (fixed-length segments of several envs); pass '
            f'--mode or --envs-per-worker to choose')
    return mode, envs_per_worker, note


COLUMNS = """\b
Columns:
  transitions/s  median over the calls of a row (each call collects
                 --samples transitions with new agent parameters)
  min..max       the slowest and fastest call
  episodes/s     episodes that ended, per second
  ratio          transitions/s over the best single-process row's
                 (the plain loop or a SyncVectorEnv)
  of limit       transitions/s over the limit's: that many plain loops
                 in parallel processes, with no sampler; what this
                 machine can do at this moment
  caller CPU     CPU of the calling process, as a share of one core
  workers CPU    CPU of the row's worker processes, summed
  discarded      episodes collected but not returned (older versions)
  waste          env steps not returned in any batch
  peak MB        the caller's peak memory during a call
Rows are timed call by call in turn, so a busy moment on a shared
machine falls on all of them alike; every row's data is checked after
each call, untimed.
"""


@main.command(epilog=COLUMNS)
@click.option('--env', default='CartPole-v1', show_default=True,
              callback=_env_id,
              help=f'gymnasium env id ({_envs.IMAGE_ENV_ID} for '
                   f'84x84x3 frames; Atari ids like ALE/Pong-v5 get the '
                   f'standard 4x84x84 preprocessing, with the bench extra)')
@click.option('--backend', callback=_backends, default='multiprocessing',
              show_default=True,
              help=f'where workers run: {", ".join(sorted(_bench.BACKENDS))}'
                   f'; a list like multiprocessing,ray times each')
@click.option('--workers', type=click.IntRange(min=1), default=None,
              help='worker count  [default: the CPUs this process may use]')
@click.option('--envs-per-worker', callback=_counts, default='1',
              help='1 runs DefaultWorker, more runs VecWorker; a list like '
                   '1,8,16 times each  [default: 1; 1,8 with --compare]')
@click.option('--mode', callback=_modes, default='episodes',
              help='our rows time obtain_samples (episodes: whole episodes) '
                   'or obtain_steps (steps: envs keep running, segments), '
                   'or push_update and the next batch of a stream (stream: '
                   'workers never wait), or our vector env stepped by the '
                   'policy in this process (vector: workers x '
                   'envs-per-worker envs; with --compare beside gymnasium\'s '
                   'and SB3\'s vector envs of as many envs); '
                   'episodes,steps,stream,vector times each  '
                   '[default: episodes; steps with --compare]')
@click.option('--train-ms', type=click.FloatRange(min=0), default=0,
              show_default=True,
              help='after each of our calls, "train" this long in the '
                   'caller, inside the timed call (a busy loop; see '
                   '--train-sleep): what stream overlaps with sampling')
@click.option('--train-sleep', is_flag=True,
              help='train by sleeping instead, as a learner waiting on a '
                   'GPU does (the CPUs stay free for the workers)')
@click.option('--agent', type=click.Choice(['mlp', 'random', 'cnn']),
              default='mlp', show_default=True,
              help='numpy MLP policy, random actions, or the Nature CNN in '
                   'torch (Atari ids; torch extra)')
@click.option('--samples', type=click.IntRange(min=1), default=20000,
              show_default=True, help='transitions per call')
@click.option('--iterations', type=click.IntRange(min=1), default=5,
              show_default=True, help='calls timed per row')
@click.option('--max-episode-length', type=click.IntRange(min=1),
              default=None, help='step cap per episode')
@click.option('--seed', type=click.IntRange(min=0), default=0,
              show_default=True)
@click.option('--step-cost-us', type=click.FloatRange(min=0), default=0,
              show_default=True,
              help='CPU every env step burns in pure Python, standing in '
                   'for an expensive simulator')
@click.option('--baseline/--no-baseline', default=True, show_default=True,
              help='beside ours, time the plain loop (env and agent in one '
                   'process) and the limit (that many plain loops in '
                   'parallel processes, sending back only counts)')
@click.option('--compare', is_flag=True,
              help='also time gymnasium SyncVectorEnv / AsyncVectorEnv and '
                   'envpool (with the bench extra) on the same task; ours '
                   'then step as they do (--mode steps, 1 and 8 envs per '
                   'worker) unless --mode or --envs-per-worker say '
                   'otherwise')
@click.option('--compare-with', callback=lambda ctx, p, v: _families(v),
              default='vector,envpool', show_default=True,
              help='which alternatives --compare times: vector (gymnasium '
                   'Sync/AsyncVectorEnv and their limit), envpool')
@click.option('--sweep-workers', callback=_counts, default=None,
              help='time our sampler at each of these worker counts, e.g. '
                   '1,2,4')
@click.option('--plot', 'plot_path', type=click.Path(dir_okay=False),
              default=None,
              help='with --sweep-workers: draw transitions/s per worker '
                   'count to this PNG (needs the plot extra)')
@click.option('--step-timeout', type=click.FloatRange(min=0, min_open=True),
              default=None,
              help="our samplers' and vector env's step_timeout (seconds): "
                   'what watching for hung workers costs')
@click.option('--json', 'json_path', type=click.Path(dir_okay=False),
              default=None, help='also write every figure to this file')
@click.option('--progress/--no-progress', default=None,
              help='progress bar on stderr  [default: when it is a terminal]')
def bench(env, backend, workers, envs_per_worker, mode, train_ms,
          train_sleep, agent, samples, iterations, max_episode_length, seed,
          step_cost_us, baseline, compare, compare_with, sweep_workers,
          step_timeout, plot_path, json_path, progress):
    """Measure sampling throughput (transitions per second).

    Prints one line per configuration timed: ours, the plain loop and
    the limit (see --baseline), and with --compare the alternatives.
    """
    if plot_path and not sweep_workers:
        raise click.UsageError('--plot needs --sweep-workers')
    if plot_path:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise click.UsageError(
                '--plot needs matplotlib: pip install '
                '"rollout-sampler[plot]"') from None
    if compare:
        mode, envs_per_worker, note = _comparable(mode, envs_per_worker)
    if 'vector' in mode.split(',') and click.get_current_context(
            ).get_parameter_source('envs_per_worker') is \
            ParameterSource.DEFAULT:
        envs_per_worker = (4,)  # 8 envs on 2 workers, a usual vector env
    result = _bench.run(
        env=env, backend=backend, workers=workers or available_cpus(),
        envs_per_worker=envs_per_worker, agent=agent, samples=samples,
        iterations=iterations, max_episode_length=max_episode_length,
        seed=seed, step_cost_us=step_cost_us, compare=compare,
        baseline=baseline, compare_with=compare_with,
        progress=progress, sweep_workers=sweep_workers, mode=mode,
        train_ms=train_ms, train_sleep=train_sleep,
        step_timeout=step_timeout,
        echo=lambda line: click.echo(line, err=True))
    if compare and note:
        result['note'] = note
    click.echo(_bench.format_table(result))
    if json_path:
        _bench.write_json(result, json_path)
        click.echo(f'wrote {json_path}')
    if plot_path:
        _bench.plot_sweep(result, plot_path)
        click.echo(f'wrote {plot_path}')
