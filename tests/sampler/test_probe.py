"""What a probe of a worker makes of the stacks it dumps (sampler._probe);
tests of whole timeouts are in test_failures.py."""

import os

from sampler import _probe

OURS = os.path.dirname(os.path.dirname(_probe.__file__))
LOOP = os.path.join(OURS, 'sampler', '_worker_process.py')


def dump(*frames):
    """faulthandler's text for a watchdog thread and a main thread whose
    frames (most recent first) are ``frames`` above the worker loop."""
    lines = ['Thread 0x00007f0000000001 (most recent call first):',
             '  File "/usr/lib/python3/selectors.py", line 415 in select',
             f'  File "{LOOP}", line 280 in watch', '',
             'Current thread 0x00007f0000000002 (most recent call first):']
    lines += [f'  File "{path}", line {line} in {name}'
              for path, line, name in frames]
    lines += [f'  File "{LOOP}", line 500 in serve',
              f'  File "{LOOP}", line 420 in run']
    return '\n'.join(lines) + '\n'


def test_the_call_is_the_outermost_user_frame_the_line_the_innermost():
    worker = os.path.join(OURS, 'workers', 'default_worker.py')
    text = dump(('/home/me/my_env.py', 12, 'physics'),
                ('/home/me/my_env.py', 30, 'step'),
                ('/venv/site-packages/gymnasium/wrappers/common.py', 125,
                 'step'),
                (worker, 171, '_run'))
    assert _probe.describe(text) == \
        'inside env.step (File "/home/me/my_env.py", line 12, in physics)'


def test_an_agent_call_and_a_wait_of_our_own():
    worker = os.path.join(OURS, 'workers', 'vec_worker.py')
    agent = dump(('/home/me/agent.py', 7, 'get_actions'),
                 (worker, 230, '_advance'))
    assert _probe.describe(agent).startswith('inside agent.get_actions (')
    framing = os.path.join(OURS, 'sampler', '_framing.py')
    blocked = dump(('/usr/lib/python3/os.py', 1, 'write'),
                   (framing, 90, 'write_pieces'))
    assert _probe.describe(blocked) == \
        'waiting for the caller to read what it sent'


def test_a_dump_without_the_main_thread_says_nothing():
    assert _probe.describe('Thread 0x1 (most recent call first):\n'
                           '  File "x.py", line 1 in f\n') is None
    assert _probe.describe('') is None
