"""What goes to the workers keeps the file names of its code."""

import pickle
import types

import helpers
from sampler import _pickling


def code_objects(code):
    """``code`` and every code object nested in it (comprehensions,
    lambdas, inner functions)."""
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from code_objects(const)


def test_functions_pickled_by_value_keep_their_file_name_and_behaviour():
    # helpers is registered by value (conftest): it is rebuilt from the
    # pickle, not imported, like a user's __main__ script in a worker.
    copy = pickle.loads(_pickling.dumps(helpers.leaves_of))
    assert copy is not helpers.leaves_of
    nested = list(code_objects(copy.__code__))
    assert len(nested) > 1  # its comprehensions are code objects too
    assert {c.co_filename for c in nested} == {helpers.__file__}
    assert copy({'a': (1, 2), 'b': 3}) == [1, 2, 3]


def test_objects_without_code_pickle_as_before():
    value = {'weights': [1.5, 2.5], 'name': 'agent'}
    assert pickle.loads(_pickling.dumps(value)) == value
