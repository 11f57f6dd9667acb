"""A pytest plugin for the run of stable-baselines3's own
``tests/test_vec_envs.py`` (see ``tests/sampler/test_sb3_suite.py``): it
puts ``sampler.vector.SubprocVecEnv`` where SB3's ``SubprocVecEnv`` is, so
that the file, unchanged, tests ours.

Loaded with ``-p sb3_suite_plugin``; importing it changes nothing.
"""


def pytest_configure(config):
    import stable_baselines3.common.vec_env as vec_env

    from sampler.vector import SubprocVecEnv
    vec_env.SubprocVecEnv = SubprocVecEnv


def pytest_collection_modifyitems(session, config, items):
    # Each collected module must hold ours, not SB3's: a file that
    # imported SB3's class some other way would test nothing of ours.
    from sampler.vector import SubprocVecEnv
    for module in {item.module for item in items}:
        found = getattr(module, 'SubprocVecEnv', None)
        if found is not SubprocVecEnv:
            msg = (f'{module.__name__}.SubprocVecEnv is {found!r}, not '
                   f'sampler.vector.SubprocVecEnv')
            raise RuntimeError(msg)
