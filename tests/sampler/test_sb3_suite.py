"""stable-baselines3's own vec env tests, run against our SubprocVecEnv.

``tests/test_vec_envs.py`` is taken from the source distribution of the
installed stable-baselines3 version, downloaded by pip at test time (it
is not part of this repository), and run unchanged in its own pytest
process, with ``sb3_suite_plugin`` putting our class where SB3's is.
"""

import os
import pathlib
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET

import psutil
import pytest

sb3 = pytest.importorskip('stable_baselines3')

PLUGIN_DIR = pathlib.Path(__file__).resolve().parent.parent / 'sb3_suite'
SUITE = 'tests/test_vec_envs.py'


def _download_suite(into):
    """SB3's ``tests/test_vec_envs.py`` of the installed version, from its
    source distribution, written into ``into``."""
    version = sb3.__version__
    subprocess.run(
        [sys.executable, '-m', 'pip', 'download', '--no-deps',
         '--no-binary', ':all:', '-q', '-d',
         str(into), f'stable-baselines3=={version}'],
        check=True, timeout=240)
    (archive,) = into.glob('*.tar.gz')
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers()
                      if m.name.endswith('/' + SUITE))
        out = into / 'test_vec_envs.py'
        out.write_bytes(tar.extractfile(member).read())
    return out


def _left_in_session(sid):
    left = []
    for process in psutil.process_iter(['pid', 'cmdline']):
        try:
            if os.getsid(process.pid) == sid:
                left.append(process.info)
        except (ProcessLookupError, PermissionError, psutil.Error):
            pass
    return left


@pytest.mark.timeout(600)
def test_sb3s_own_vec_env_tests_pass_with_our_subproc_vec_env(tmp_path):
    suite = _download_suite(tmp_path)
    (tmp_path / 'pytest.ini').write_text('[pytest]\ntimeout = 120\n')
    report = tmp_path / 'report.xml'
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(PLUGIN_DIR)] + os.environ.get('PYTHONPATH', '').split(
            os.pathsep)))
    # Its own session, so that anything it leaves behind is found.
    run = subprocess.Popen(
        [sys.executable, '-m', 'pytest', '-p', 'sb3_suite_plugin', '-p',
         'no:cacheprovider', '-q', '-rs', f'--junitxml={report}',
         suite.name],
        cwd=tmp_path, env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = run.communicate(timeout=480)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, 9)
            run.wait()
    psutil.wait_procs([p for p in psutil.process_iter()
                       if _session_of(p) == run.pid], timeout=5)
    left = _left_in_session(run.pid)
    assert run.returncode == 0, out[-6000:]
    assert not left, f'processes left behind by the suite: {left}'
    cases = ET.parse(report).getroot().iter('testcase')
    ours = {}
    for case in cases:
        name = case.get('name')
        if 'SubprocVecEnv' in name or name in (
                'test_subproc_start_method', 'test_vec_env_is_wrapped'):
            outcome = ('skipped' if case.find('skipped') is not None
                       else 'failed' if case.find('failure') is not None
                       or case.find('error') is not None else 'passed')
            ours[name] = outcome
    # Every case of ours ran and passed, but the one that needs a display.
    assert 'test_vec_deterministic[SubprocVecEnv]' in ours, ours
    assert 'test_vec_env_is_wrapped' in ours, ours
    skipped = {n for n, o in ours.items() if o == 'skipped'}
    assert skipped <= {'test_render[SubprocVecEnv]'}, ours
    assert all(o == 'passed' for n, o in ours.items()
               if n not in skipped), ours
    assert len(ours) - len(skipped) >= 15, ours


def _session_of(process):
    try:
        return os.getsid(process.pid)
    except (ProcessLookupError, PermissionError):
        return None
