"""How agents, envs and updates are pickled on their way to the workers.

cloudpickle pickles *by value* what the workers cannot import: classes and
functions of the user's ``__main__`` script, of notebooks, and of modules
registered with ``cloudpickle.register_pickle_by_value``. Since release
3.1.3 it names every code object it pickles that way ``"<dynamic-code>"``
(for payloads that are the same wherever the code was defined), so a
worker's traceback read ``File "<dynamic-code>", line 80, in step``: no
file and no source line, which is most of what a traceback is for.

:func:`dumps` pickles with cloudpickle, but code objects keep their real
``co_filename``; the worker's ``linecache`` then finds the source wherever
the file exists on the worker's machine (always, for a process on the
same machine), and tracebacks show the line that raised. Older releases
already kept the name, and there this is a no-op.
"""

import io
import pickle
import types
from collections import ChainMap

import cloudpickle

#: cloudpickle's reducer for code objects, whose result is adjusted here.
#: None if a future release stops using one; code then pickles as
#: cloudpickle decides, and a test of tracebacks says so.
_cloudpickle_code_reduce = cloudpickle.Pickler.dispatch_table.get(
    types.CodeType)


def _code_reduce(code):
    constructor, args = _cloudpickle_code_reduce(code)
    return _code_with_filename, (constructor, args, code.co_filename)


def _code_with_filename(constructor, args, filename):
    """Rebuild a code object as cloudpickle does, under its own file name.

    ``co_filename`` takes no part in running the code, only in tracebacks,
    warnings and ``inspect``; nested code objects (methods' lambdas and
    comprehensions) pass through here too, as items of ``co_consts``.
    """
    code = constructor(*args)
    if code.co_filename != filename:
        code = code.replace(co_filename=filename)
    return code


class _Pickler(cloudpickle.Pickler):
    """cloudpickle's pickler with code objects that keep their file name."""

    if _cloudpickle_code_reduce is not None:
        dispatch_table = ChainMap({types.CodeType: _code_reduce},
                                  cloudpickle.Pickler.dispatch_table)


def dumps(obj):
    """Pickle ``obj`` as ``cloudpickle.dumps`` does (``pickle.loads`` or
    ``cloudpickle.loads`` read it back), keeping code objects' file names.
    """
    with io.BytesIO() as file:
        _Pickler(file, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
        return file.getvalue()
