"""Nests: arrays, or dicts / tuples of nests, as gymnasium Dict and Tuple
spaces produce them.

Every helper here treats a ``dict`` or ``tuple`` as a branch and anything
else as a leaf. Observations and actions of a ``Dict`` space are stored as
dicts of arrays and those of a ``Tuple`` space as tuples of arrays, so one
set of helpers serves every field of an :class:`~workers.EpisodeBatch`.
"""

import numpy as np


def is_branch(x):
    return isinstance(x, (dict, tuple))


def map_nest(fn, nest):
    """Apply ``fn`` to every leaf of ``nest``, keeping its structure."""
    if isinstance(nest, dict):
        return {k: map_nest(fn, v) for k, v in nest.items()}
    if isinstance(nest, tuple):
        return tuple(map_nest(fn, v) for v in nest)
    return fn(nest)


def leaves(nest, path=''):
    """Yield ``(path, leaf)`` pairs; ``path`` reads like ``['pos'][0]``."""
    if isinstance(nest, dict):
        for k, v in nest.items():
            yield from leaves(v, f'{path}[{k!r}]')
    elif isinstance(nest, tuple):
        for i, v in enumerate(nest):
            yield from leaves(v, f'{path}[{i}]')
    else:
        yield path, nest


def structure(nest):
    """A hashable description of a nest's branches, for comparisons."""
    if isinstance(nest, dict):
        return ('dict', tuple((k, structure(v)) for k, v in nest.items()))
    if isinstance(nest, tuple):
        return ('tuple', tuple(structure(v) for v in nest))
    return None


def as_arrays(nest):
    """The nest with every leaf turned into an ndarray (no copy if it is)."""
    return map_nest(np.asarray, nest)


def stack(items):
    """Stack a sequence of nests of one structure into a nest of arrays.

    ``stack([{'a': 1}, {'a': 2}])`` is ``{'a': array([1, 2])}``.
    """
    first = items[0]
    if isinstance(first, dict):
        return {k: stack([x[k] for x in items]) for k in first}
    if isinstance(first, tuple):
        return tuple(stack([x[i] for x in items]) for i in range(len(first)))
    return np.asarray(items)


def index(nest, idx):
    """Index every leaf with ``idx`` (an int, slice or index array)."""
    if isinstance(nest, dict):
        return {k: index(v, idx) for k, v in nest.items()}
    if isinstance(nest, tuple):
        return tuple(index(v, idx) for v in nest)
    return nest[idx]


def concatenate(nests):
    """Concatenate nests of one structure leaf by leaf along axis 0."""
    first = nests[0]
    if isinstance(first, dict):
        return {k: concatenate([n[k] for n in nests]) for k in first}
    if isinstance(first, tuple):
        return tuple(concatenate([n[i] for n in nests])
                     for i in range(len(first)))
    if len(nests) == 1:
        return first
    return np.concatenate(nests)


def nest_equal(a, b):
    """Structure and every leaf equal (NaNs in the same places count equal)."""
    if structure(a) != structure(b):
        return False
    for (_, x), (_, y) in zip(leaves(a), leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != y.shape:
            return False
        try:
            if not np.array_equal(x, y, equal_nan=True):
                return False
        except TypeError:  # equal_nan is refused for non-numeric dtypes
            if not np.array_equal(x, y):
                return False
    return True


def _stack_ragged(values):
    """Stack leaf values; values that cannot share one array go in an object
    array, one entry per row, so nothing an env reported is dropped."""
    try:
        arr = np.asarray(values)
    except ValueError:
        arr = None
    if arr is None or arr.dtype == object or arr.ndim == 0:
        arr = np.empty(len(values), dtype=object)
        arr[:] = [None] * len(values)
        for i, v in enumerate(values):
            arr[i] = v
    return arr


def _zeros_like_nest(nest):
    if isinstance(nest, dict):
        return {k: _zeros_like_nest(v) for k, v in nest.items()}
    if isinstance(nest, tuple):
        return tuple(_zeros_like_nest(v) for v in nest)
    arr = np.asarray(nest)
    if arr.dtype == object:
        return None
    return np.zeros_like(arr)


def stack_infos(infos):
    """Stack per-step info dicts into a dict of arrays, one row per dict.

    Keys present in only some rows (an env that reports ``episode`` on the
    last step, say) are filled with zeros there, and a boolean ``_key`` mask
    says which rows had them, as gymnasium's vector envs do.
    """
    if not infos or not any(infos):
        return {}
    keys = dict.fromkeys(infos[0])
    uniform = all(d.keys() == keys.keys() for d in infos)
    if not uniform:
        for d in infos:
            keys.update(dict.fromkeys(d))
    out = {}
    for key in keys:
        if uniform:
            values = [d[key] for d in infos]
            out[key] = _stack_value(values)
            continue
        present = np.fromiter((key in d for d in infos), dtype=bool,
                              count=len(infos))
        example = next(d[key] for d in infos if key in d)
        filler = _zeros_like_nest(example)
        values = [d[key] if key in d else filler for d in infos]
        out[key] = _stack_value(values)
        out['_' + key] = present
    return out


def _stack_value(values):
    first = values[0]
    if isinstance(first, dict) and all(isinstance(v, dict) for v in values):
        return stack_infos(values)
    if (isinstance(first, tuple) and all(
            isinstance(v, tuple) and len(v) == len(first) for v in values)):
        return tuple(_stack_value([v[i] for v in values])
                     for i in range(len(first)))
    return _stack_ragged(values)


def concatenate_infos(blocks, sizes, *, what, missing='raise'):
    """Concatenate dicts of arrays with ``sizes[i]`` rows each.

    ``missing='raise'`` refuses dicts whose keys differ; ``'mask'`` fills a
    key absent from some blocks with zeros and adds or extends its boolean
    ``_key`` mask.
    """
    keys = dict.fromkeys(blocks[0])
    for i, block in enumerate(blocks[1:], start=1):
        if block.keys() != keys.keys():
            if missing == 'raise':
                msg = (f'{what}: batch 0 has keys {sorted(keys)} but batch '
                       f'{i} has keys {sorted(block)}; pass '
                       f"missing_infos='mask' to fill absent keys with zeros "
                       f'and a _key mask')
                raise ValueError(msg)
            keys.update(dict.fromkeys(block))
    if all(b.keys() == keys.keys() for b in blocks):
        return {k: concatenate([b[k] for b in blocks]) for k in keys}
    # Keys that are masks of other keys are rebuilt below, not copied.
    value_keys = [k for k in keys
                  if not (k.startswith('_') and k[1:] in keys)]
    out = {}
    for key in value_keys:
        example = next(b[key] for b in blocks if key in b)
        parts, masks = [], []
        for block, size in zip(blocks, sizes):
            if key in block:
                parts.append(block[key])
                masks.append(block.get('_' + key, np.ones(size, dtype=bool)))
            else:
                parts.append(map_nest(
                    lambda a, n=size: np.zeros((n,) + a.shape[1:], a.dtype),
                    example))
                masks.append(np.zeros(size, dtype=bool))
        out[key] = concatenate(parts)
        out['_' + key] = np.concatenate(masks)
    return out
