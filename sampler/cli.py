"""The ``sampler`` command line (also ``python -m sampler``)."""

import click

from sampler import bench as _bench
from sampler.sampler import available_cpus
from workers.env_update import check_env_id


@click.group()
@click.version_option(package_name='rollout-sampler')
def main():
    """rollout-sampler: collect RL experience fast, and measure it."""


def _env_id(ctx, param, value):
    try:
        check_env_id(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None
    return value


@main.command()
@click.option('--env', default='CartPole-v1', show_default=True,
              callback=_env_id, help='gymnasium env id')
@click.option('--backend', type=click.Choice(sorted(_bench.BACKENDS)),
              default='multiprocessing', show_default=True,
              help='where workers run')
@click.option('--workers', type=click.IntRange(min=1), default=None,
              help='worker count  [default: the CPUs this process may use]')
@click.option('--envs-per-worker', type=click.IntRange(min=1), default=1,
              show_default=True,
              help='1 runs DefaultWorker, more runs VecWorker')
@click.option('--agent', type=click.Choice(['mlp', 'random']), default='mlp',
              show_default=True, help='numpy MLP policy or random actions')
@click.option('--samples', type=click.IntRange(min=1), default=20000,
              show_default=True, help='transitions per call')
@click.option('--iterations', type=click.IntRange(min=1), default=5,
              show_default=True, help='calls to time')
@click.option('--max-episode-length', type=click.IntRange(min=1),
              default=None, help='step cap per episode')
@click.option('--seed', type=click.IntRange(min=0), default=0,
              show_default=True)
@click.option('--json', 'json_path', type=click.Path(dir_okay=False),
              default=None, help='also write every figure to this file')
@click.option('--progress/--no-progress', default=None,
              help='progress bar on stderr  [default: when it is a terminal]')
def bench(env, backend, workers, envs_per_worker, agent, samples,
          iterations, max_episode_length, seed, json_path, progress):
    """Measure sampling throughput (transitions per second)."""
    result = _bench.run(
        env=env, backend=backend, workers=workers or available_cpus(),
        envs_per_worker=envs_per_worker, agent=agent, samples=samples,
        iterations=iterations, max_episode_length=max_episode_length,
        seed=seed, progress=progress)
    click.echo(_bench.format_table(result))
    if json_path:
        _bench.write_json(result, json_path)
        click.echo(f'wrote {json_path}')
