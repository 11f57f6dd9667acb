"""Where a worker process is right now: which call it is in (``env.step``,
``agent.get_action``, waiting for a command, ...) and the line of the
user's code, for the message of a call that timed out.

The worker's main thread may be anywhere, stuck in C code included, and
holding the GIL; so the caller does not ask it. It sends the worker
PROBE_SIGNAL, and ``faulthandler``, registered for that signal in the
worker (:func:`listen`), writes the stacks of its threads to the worker's
end of a socket pair from a C signal handler, with no Python code run in
the worker. The caller reads the text from its end (:func:`ask`) and
:func:`describe` names the call from the main thread's frames::

    caller --os.kill(PROBE_SIGNAL)--> worker: faulthandler dumps stacks
    caller <------ probe socket ------ worker  (text; dropped if full)

Nothing runs in a worker that is not probed: a probe costs only the
process that timed out a call.
"""

import faulthandler
import linecache
import os
import re
import select
import signal
import sys
import sysconfig
import time
import traceback

#: The signal a worker dumps its stacks on. A real-time one: no terminal
#: or library sends it, so a dump comes only when the caller asks.
PROBE_SIGNAL = getattr(signal, 'SIGRTMIN', 0) + 4 \
    if hasattr(signal, 'SIGRTMIN') else None

#: The directories of this project's two packages.
_OURS = tuple(os.path.dirname(os.path.dirname(os.path.abspath(__file__))) +
              os.sep + name + os.sep for name in ('sampler', 'workers'))

#: Python's own library.
_STDLIB = tuple({sysconfig.get_paths()[k] + os.sep
                 for k in ('stdlib', 'platstdlib')})

_FRAME = re.compile(r'^\s*File "(.*)", line (\d+) in (\S+)')

#: The calls a worker makes into user code, by the name of the function
#: the worker called.
_CALLS = {'step': 'env.step', 'reset': 'env.reset',
          'get_action': 'agent.get_action',
          'get_actions': 'agent.get_actions', 'set_params':
          'agent.set_params', 'seed': 'agent.seed', 'close': 'env.close'}

#: What our own code is at, by the function it waits in: a running
#: worker looks at its commands between steps (and waits there for
#: one when idle, or paused by a stream's budget).
_WAITS = {'serve': 'between steps, at its commands',
          'write_pieces': 'waiting for the caller to read what it sent'}


def listen(fd):
    """In a worker: dump every thread's stack to ``fd`` (non-blocking: a
    dump that does not fit is cut, never waited for) on PROBE_SIGNAL."""
    if PROBE_SIGNAL is None:
        return
    os.set_blocking(fd, False)
    faulthandler.register(PROBE_SIGNAL, file=fd, all_threads=True,
                          chain=False)


def stop_listening():
    """In a worker, before the probe socket closes."""
    if PROBE_SIGNAL is not None:
        faulthandler.unregister(PROBE_SIGNAL)


def ask(probes, timeout=0.5, read=None):
    """Probe worker processes: ``probes`` maps a key to ``(pid, sock)``
    (the caller's end of the worker's probe socket). Returns the key's
    :func:`describe` (or ``read(dump)``, not None) for each worker that
    answered within ``timeout`` seconds."""
    read = read or describe
    if PROBE_SIGNAL is None or not probes:
        return {}
    texts = {}
    for key, (pid, sock) in probes.items():
        _drain(sock)  # a dump from an earlier probe that came late
        try:
            os.kill(pid, PROBE_SIGNAL)
        except OSError:
            continue  # gone: its exit says more than a probe could
        texts[sock.fileno()] = (key, sock, [])
    deadline = time.monotonic() + timeout
    quiet = None  # a dump is written in pieces: read until they stop
    while texts:
        now = time.monotonic()
        wait = deadline - now if quiet is None else min(quiet - now,
                                                        deadline - now)
        if wait <= 0:
            break
        ready, _, _ = select.select(list(texts), [], [], wait)
        if not ready:
            if quiet is not None:
                break
            continue
        for fd in ready:
            try:
                chunk = texts[fd][1].recv(65536)
            except OSError:
                chunk = b''
            if chunk:
                texts[fd][2].append(chunk)
        quiet = time.monotonic() + 0.05
    out = {}
    for key, _, chunks in texts.values():
        where = read(b''.join(chunks).decode('utf-8', 'replace'))
        if where:
            out[key] = where
    return out


def _drain(sock):
    try:
        while select.select([sock], [], [], 0)[0] and sock.recv(65536):
            pass
    except OSError:
        pass


def describe(dump):
    """What the worker's main thread was doing, from faulthandler's dump
    of its threads: e.g. ``'inside env.step (File "env.py", line 12, in
    step)'``; None if the dump does not show the main thread."""
    for frames in _threads(dump):
        names = [(os.path.basename(f), name) for f, _, name in frames]
        if ('_worker_process.py', 'run') in names:  # the main thread
            return describe_frames(frames)
    return None


def hang_report(dump):
    """``(call, stack)`` of a worker process's main thread from
    faulthandler's dump (see :func:`report_frames`), or None if the dump
    does not show it."""
    for frames in _threads(dump):
        names = [(os.path.basename(f), name) for f, _, name in frames]
        if ('_worker_process.py', 'run') in names:
            # From the worker's loop on: how multiprocessing started the
            # process says nothing about the hang.
            return report_frames(frames[:names.index(
                ('_worker_process.py', 'run')) + 1])
    return None


def report_frames(frames):
    """For a hung worker's thread, from its frames (most recent first,
    as ``(file, line, function)``): the call of user code it is in
    (``'env.step'``; None if it is in this project's code) and its stack
    as a traceback's text, most recent call last, with the source lines
    where they can be read."""
    call = None
    for k, (path, _, _) in enumerate(frames):
        if path.startswith(_OURS):
            if k:
                name = frames[k - 1][2]
                call = _CALLS.get(name, f'{name}()')
            break
    lines = []
    for path, line, name in reversed(frames):
        lines.append(f'  File "{path}", line {line}, in {name}\n')
        source = linecache.getline(path, line).strip()
        if source:
            lines.append(f'    {source}\n')
    return call, ''.join(lines)


def thread_frames(ident):
    """The frames of thread ``ident`` of this process, most recent
    first, as ``(file, line, function)``; None if there is no such
    thread."""
    frame = sys._current_frames().get(ident)
    if frame is None:
        return None
    return [(f.filename, f.lineno, f.name)
            for f in reversed(traceback.extract_stack(frame))]


def where_thread(ident):
    """:func:`describe_frames` of thread ``ident`` of this process, or
    None if there is no such thread (for a worker that runs in a thread
    of a process of another's, as a Ray actor's does)."""
    frames = thread_frames(ident)
    return None if frames is None else describe_frames(frames)


def describe_frames(frames):
    """What a worker's thread is doing, from its frames (most recent
    first, as ``(file, line, function)``), or None if it is not in this
    project's code."""
    for k, (path, line, name) in enumerate(frames):
        if path.startswith(_OURS):
            break
    else:
        return None
    theirs = frames[:k]
    if name in _WAITS:
        return _WAITS[name]
    if not theirs and os.path.basename(path) == 'env_pool_worker.py' and \
            name.endswith('step'):
        return "inside env.step (the envpool pool's C++ step)"
    if not theirs:
        return f"in the sampler's {name}"
    call = _CALLS.get(theirs[-1][2], f'{theirs[-1][2]}()')
    # The innermost line of the user's own code: Python's library
    # (threading's wait, say) says less.
    own = [f for f in theirs if not f[0].startswith(_STDLIB)]
    path, line, func = (own or theirs)[0]
    return f'inside {call} (File "{path}", line {line}, in {func})'


def _threads(dump):
    """Each thread's frames, most recent first, as ``(file, line,
    function)``."""
    threads, frames = [], None
    for text in dump.splitlines():
        if text.startswith(('Thread 0x', 'Current thread 0x')):
            frames = []
            threads.append(frames)
            continue
        match = _FRAME.match(text)
        if match and frames is not None:
            frames.append((match[1], int(match[2]), match[3]))
    return threads
