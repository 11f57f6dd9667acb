import re

import numpy as np
import pytest

from helpers import leaves_of
from workers import EpisodeBatch


def fields(**overrides):
    """A valid two-episode batch (lengths 3 and 2, N=5) as keyword args."""
    base = dict(
        observations=np.arange(10, dtype=np.float32).reshape(5, 2),
        actions=np.array([0, 1, 0, 1, 1]),
        rewards=np.array([1.0, 2.0, 3.0, 4.0, 5.0]),
        terminated=np.array([False, False, True, False, False]),
        truncated=np.array([False, False, False, False, True]),
        last_observations=np.array([[100.0, 101.0], [200.0, 201.0]],
                                   dtype=np.float32),
        lengths=np.array([3, 2]),
        env_infos={'x': np.arange(5)},
        agent_infos={'logits': np.zeros((5, 2))},
        episode_infos={'reset': np.array([7, 8])},
        versions=np.array([4, 4]),
        worker_numbers=np.array([0, 1]),
    )
    base.update(overrides)
    return base


def nested_fields():
    obs = {'pos': np.arange(10.0).reshape(5, 2),
           'pair': (np.arange(5), np.ones((5, 1), np.float32))}
    last = {'pos': np.array([[9.0, 9.0], [8.0, 8.0]]),
            'pair': (np.array([5, 6]), np.zeros((2, 1), np.float32))}
    return fields(observations=obs, last_observations=last,
                  actions=(np.array([0, 1, 0, 1, 1]), np.zeros((5, 3))))


@pytest.fixture(params=['flat', 'nested'])
def batch(request):
    return EpisodeBatch(**(fields() if request.param == 'flat'
                           else nested_fields()))


# Rejections: each names the field and the shapes. --------------------------

REJECTIONS = [
    ('observations leading dim',
     dict(observations=np.zeros((4, 2))),
     r"^observations has shape \(4, 2\); its leading dimension must be 5 "
     r"\(N, the sum of lengths\)$"),
    ('nested observation leaf',
     dict(observations={'a': np.zeros((5, 2)), 'b': np.zeros((6,))},
          last_observations={'a': np.zeros((2, 2)), 'b': np.zeros((2,))}),
     r"^observations\['b'\] has shape \(6,\); its leading dimension must "
     r"be 5"),
    ('actions leading dim',
     dict(actions=np.zeros(3)),
     r'^actions has shape \(3,\); its leading dimension must be 5'),
    ('rewards shape',
     dict(rewards=np.zeros((5, 1))),
     r'^rewards has shape \(5, 1\), expected \(5,\)'),
    ('terminated shape',
     dict(terminated=np.zeros(4, bool)),
     r'^terminated has shape \(4,\), expected \(5,\)'),
    ('truncated not boolean',
     dict(truncated=np.array([0.0, 0.0, 0.0, 0.0, 0.5])),
     r'^truncated must hold booleans, got dtype float64$'),
    ('length below one',
     dict(lengths=np.array([5, 0])),
     r'^lengths must all be >= 1, got lengths\[1\] = 0$'),
    ('lengths not summing to N',
     dict(lengths=np.array([3, 3])),
     r'^observations has shape \(5, 2\); its leading dimension must be 6'),
    ('lengths not integers',
     dict(lengths=np.array([3.0, 2.0])),
     r'^lengths must be a 1-D integer array, got shape \(2,\) and dtype '
     r'float64$'),
    ('flag inside an episode',
     dict(terminated=np.array([False, True, True, False, False])),
     r'^terminated: step 1 lies inside segment 0 \(steps 0\.\.2\) but is '
     r'flagged terminated'),
    ('truncated inside an episode',
     dict(truncated=np.array([False, False, False, True, True])),
     r'^truncated: step 3 lies inside segment 1 \(steps 3\.\.4\)'),
    ('flag missing at an episode end',
     dict(truncated=np.zeros(5, bool)),
     r'^terminated/truncated: segment 1 ends at step 4 with neither flag '
     r'set and is not cut'),
    ('env info batch size',
     dict(env_infos={'x': np.arange(4)}),
     r"^env_infos\['x'\] has shape \(4,\); its leading dimension must be 5"),
    ('agent info batch size',
     dict(agent_infos={'logits': np.zeros((6, 2))}),
     r"^agent_infos\['logits'\] has shape \(6, 2\); its leading dimension "
     r'must be 5'),
    ('episode info length',
     dict(episode_infos={'reset': np.arange(5)}),
     r"^episode_infos\['reset'\] has shape \(5,\); its leading dimension "
     r'must be 2 \(E, the number of segments\)$'),
    ('last_observations length',
     dict(last_observations=np.zeros((3, 2))),
     r'^last_observations has shape \(3, 2\); its leading dimension must be '
     r'2 \(E, the number of segments\)$'),
    ('last_observations row shape',
     dict(last_observations=np.zeros((2, 3))),
     r'^last_observations has per-row shape \(3,\) but observations has '
     r'\(2,\)'),
    ('last_observations structure',
     dict(last_observations={'a': np.zeros((2, 2))}),
     r"^last_observations has structure \{'a': array\} but observations has "
     r'array'),
    ('versions length',
     dict(versions=np.array([1, 2, 3])),
     r'^versions has shape \(3,\) and dtype int64, expected \(2,\) integers'),
    ('worker_numbers dtype',
     dict(worker_numbers=np.array([0.5, 1.0])),
     r'^worker_numbers has shape \(2,\) and dtype float64, expected \(2,\) '
     r'integers'),
    ('infos not a dict',
     dict(env_infos=[1, 2, 3, 4, 5]),
     r'^env_infos must be a dict of arrays, got list$'),
    ('cut segment flagged',
     dict(cut=np.array([False, True])),
     r'^cut: segment 1 is cut \(its episode goes on\) but its last step 4 '
     r'is flagged terminated or truncated; a cut segment has neither flag '
     r'set$'),
    ('cut flags length',
     dict(cut=np.array([False])),
     r'^cut has shape \(1,\), expected \(2,\) \(E, the number of '
     r'segments\)$'),
    ('first segment with steps before it',
     dict(prior_steps=np.array([0, 4])),
     r'^starts: segment 1 starts its episode but has prior_steps=4 and '
     r'prior_returns=0\.0; both must be 0$'),
    ('continuing segment with nothing before it',
     dict(starts=np.array([True, False])),
     r'^starts: segment 1 continues its episode but has prior_steps=0; it '
     r'must be >= 1$'),
    ('the same segment twice',
     dict(episode_ids=np.array([5, 5]), cut=np.array([False, False])),
     r'^episode_ids: segments 0 and 1 are the same steps of episode 5 '
     r'\(prior_steps 0\); no segment may come twice$'),
    ('steps after the episode ended',
     dict(episode_ids=np.array([5, 5]), starts=np.array([True, False]),
          prior_steps=np.array([0, 3]), prior_returns=np.array([0.0, 6.0])),
     r'^cut: segment 0 ends episode 5, but segment 1 has later steps of '
     r'it$'),
]


@pytest.mark.parametrize('overrides,pattern',
                         [r[1:] for r in REJECTIONS],
                         ids=[r[0] for r in REJECTIONS])
def test_construction_rejects(overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        EpisodeBatch(**fields(**overrides))


def test_valid_batch_sizes_and_derived_fields():
    b = EpisodeBatch(**fields())
    assert len(b) == 5
    assert b.n_episodes == 2
    assert b.episode_returns.tolist() == [6.0, 9.0]
    assert b.episode_starts.tolist() == [0, 3]
    # Within an episode the next observation is the following row; at its
    # end it is that episode's last observation.
    expected = np.array([[2, 3], [4, 5], [100, 101], [8, 9], [200, 201]],
                        dtype=np.float32)
    np.testing.assert_array_equal(b.next_observations, expected)


def test_integer_rewards_become_floats_and_int_flags_bools():
    b = EpisodeBatch(**fields(rewards=np.array([1, 2, 3, 4, 5]),
                              terminated=np.array([0, 0, 1, 0, 0])))
    assert b.rewards.dtype == np.float64
    assert b.terminated.dtype == bool


# Splitting, concatenating, padding -----------------------------------------

def test_concatenate_of_split_equals_batch(batch):
    parts = batch.split()
    assert [p.n_episodes for p in parts] == [1, 1]
    assert [len(p) for p in parts] == [3, 2]
    assert EpisodeBatch.concatenate(*parts) == batch


def test_equality_sees_a_changed_value(batch):
    other = EpisodeBatch(**{**fields(), 'rewards': np.arange(5.0)}) \
        if not isinstance(batch.observations, dict) else \
        EpisodeBatch(**{**nested_fields(), 'rewards': np.arange(5.0)})
    assert other != batch


def test_head_and_episode(batch):
    head = batch.head(1)
    assert head.n_episodes == 1 and len(head) == 3
    assert head == batch.episode(0)
    assert batch.episode(-1) == batch.split()[1]
    with pytest.raises(IndexError, match='episode index 2 is out of range'):
        batch.episode(2)


def test_next_observations_nested():
    b = EpisodeBatch(**nested_fields())
    nxt = b.next_observations
    np.testing.assert_array_equal(nxt['pos'][2], [9.0, 9.0])
    np.testing.assert_array_equal(nxt['pos'][0], b.observations['pos'][1])
    np.testing.assert_array_equal(nxt['pair'][0], [1, 2, 5, 4, 6])


def test_concatenate_refuses_nothing():
    with pytest.raises(ValueError, match='^EpisodeBatch.concatenate needs at '
                                         'least one batch, got none$'):
        EpisodeBatch.concatenate()


def test_concatenate_refuses_mismatched_info_keys():
    a = EpisodeBatch(**fields())
    b = EpisodeBatch(**fields(env_infos={'y': np.arange(5)}))
    with pytest.raises(ValueError, match=re.escape(
            "env_infos: batch 0 has keys ['x'] but batch 1 has keys ['y']")):
        EpisodeBatch.concatenate(a, b)


def test_concatenate_refuses_mismatched_observation_keys():
    a = EpisodeBatch(**nested_fields())
    f = nested_fields()
    f['observations'] = {'other': f['observations']['pos']}
    f['last_observations'] = {'other': f['last_observations']['pos']}
    b = EpisodeBatch(**f)
    with pytest.raises(ValueError, match=r"^batch 1 observations has "
                                         r"structure \{'other': array\} but "
                                         r"batch 0 observations has "
                                         r"\{'pos'"):
        EpisodeBatch.concatenate(a, b)


def test_concatenate_refuses_different_row_shapes():
    a = EpisodeBatch(**fields())
    b = EpisodeBatch(**fields(observations=np.zeros((5, 3)),
                              last_observations=np.zeros((2, 3))))
    with pytest.raises(ValueError, match=r'^batch 1 observations has '
                                         r'per-row shape \(3,\) but batch 0 '
                                         r'observations has \(2,\); only '
                                         r'batches of the same spaces can be '
                                         r'concatenated$'):
        EpisodeBatch.concatenate(a, b)


def test_concatenate_masks_missing_info_keys_when_asked():
    a = EpisodeBatch(**fields())
    b = EpisodeBatch(**fields(env_infos={}))
    c = EpisodeBatch.concatenate(a, b, missing_infos='mask')
    assert c.env_infos['x'].tolist() == [0, 1, 2, 3, 4, 0, 0, 0, 0, 0]
    assert c.env_infos['_x'].tolist() == [True] * 5 + [False] * 5


def test_padded_shapes_and_mask(batch):
    p = batch.padded()
    assert p['valids'].tolist() == [[True, True, True],
                                    [True, True, False]]
    assert p['rewards'].tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]]
    assert p['terminated'].shape == (2, 3)
    assert p['agent_infos']['logits'].shape == (2, 3, 2)
    obs = p['observations']
    if isinstance(obs, dict):
        assert obs['pos'].shape == (2, 3, 2)
        assert obs['pair'][1].shape == (2, 3, 1)
        np.testing.assert_array_equal(obs['pos'][1, 2], [0.0, 0.0])
    else:
        assert obs.shape == (2, 3, 2)
        np.testing.assert_array_equal(obs[1, :2], batch.observations[3:])
        np.testing.assert_array_equal(p['next_observations'][0, 2],
                                      [100.0, 101.0])
    wide = batch.padded(max_length=6)
    assert wide['valids'].shape == (2, 6)
    assert wide['valids'].sum() == len(batch)


def test_padded_refuses_short_max_length(batch):
    with pytest.raises(ValueError, match=r'^max_length must be an int >= the '
                                         r'longest episode \(3\), got 2$'):
        batch.padded(max_length=2)


def test_nbytes_and_check(batch):
    leaves = [batch.observations, batch.actions, batch.last_observations]
    total = sum(x.nbytes for nest in leaves for x in leaves_of(nest))
    total += batch.rewards.nbytes + batch.terminated.nbytes
    total += batch.truncated.nbytes + batch.lengths.nbytes
    total += batch.versions.nbytes + batch.worker_numbers.nbytes
    total += batch.episode_ids.nbytes + batch.starts.nbytes
    total += batch.cut.nbytes + batch.prior_steps.nbytes
    total += batch.prior_returns.nbytes
    total += sum(v.nbytes for v in batch.env_infos.values())
    total += sum(v.nbytes for v in batch.agent_infos.values())
    total += sum(v.nbytes for v in batch.episode_infos.values())
    assert batch.nbytes == total
    batch.check()
    batch.terminated[0] = True  # edited in place: now invalid
    with pytest.raises(ValueError, match='step 0 lies inside segment 0'):
        batch.check()


# Segments: episodes cut at a call's end and continued in the next. ---------

def segment_batches():
    """Episode 7 cut after 3 steps, then finished in a second batch of 2
    steps; episode 8 whole in the first batch."""
    first = EpisodeBatch(
        observations=np.arange(5.0).reshape(5, 1),
        actions=np.zeros(5, np.int64),
        rewards=np.array([1.0, 2.0, 3.0, 10.0, 20.0]),
        terminated=np.array([False, False, False, False, True]),
        truncated=np.zeros(5, bool),
        last_observations=np.array([[3.0], [99.0]]),
        lengths=np.array([3, 2]),
        episode_ids=np.array([7, 8]),
        cut=np.array([True, False]))
    second = EpisodeBatch(
        observations=np.array([[3.0], [4.0]]),
        actions=np.zeros(2, np.int64),
        rewards=np.array([4.0, 5.0]),
        terminated=np.array([False, False]),
        truncated=np.array([False, True]),
        last_observations=np.array([[5.0]]),
        lengths=np.array([2]),
        episode_ids=np.array([7]),
        starts=np.array([False]),
        prior_steps=np.array([3]),
        prior_returns=np.array([6.0]))
    return first, second


def test_whole_episodes_by_default(batch):
    assert batch.starts.tolist() == [True, True]
    assert batch.cut.tolist() == [False, False]
    assert batch.episode_ids.tolist() == [0, 1]
    stats = batch.episode_stats()
    assert stats['lengths'].tolist() == batch.lengths.tolist()
    assert stats['returns'].tolist() == batch.episode_returns.tolist()


def test_episode_stats_count_the_steps_of_earlier_segments():
    first, second = segment_batches()
    stats = first.episode_stats()  # episode 7 has not ended yet
    assert stats['episode_ids'].tolist() == [8]
    assert stats['lengths'].tolist() == [2]
    assert stats['returns'].tolist() == [30.0]
    stats = second.episode_stats()
    assert stats['episode_ids'].tolist() == [7]
    assert stats['lengths'].tolist() == [5]
    assert stats['returns'].tolist() == [15.0]
    assert second.episode_returns.tolist() == [9.0]  # the segment's own


def test_segments_survive_concatenate_split_and_padded():
    first, second = segment_batches()
    both = EpisodeBatch.concatenate(first, second)
    both.check()
    assert both.episode_ids.tolist() == [7, 8, 7]
    assert both.starts.tolist() == [True, True, False]
    assert both.cut.tolist() == [True, False, False]
    assert both.prior_steps.tolist() == [0, 0, 3]
    assert EpisodeBatch.concatenate(*both.split()) == both
    assert both.episode(2) == second
    padded = both.padded()
    assert padded['cut'].tolist() == [True, False, False]
    assert padded['starts'].tolist() == [True, True, False]
    assert padded['episode_ids'].tolist() == [7, 8, 7]
    # A cut segment bootstraps from its last observation.
    assert both.next_observations[2, 0] == 3.0
    assert sorted(both.episode_stats()['lengths'].tolist()) == [2, 5]
    with pytest.raises(ValueError, match='^episode_ids: segments 0 and 2 '
                                         'are the same steps of episode 7'):
        EpisodeBatch.concatenate(first, first).check()


# Multi-agent batches: segments are told apart by agent too. -------------


def agent_fields(episode_ids, agent_ids, **overrides):
    """The two segments of fields() as two agents' steps of episodes."""
    return fields(episode_ids=np.array(episode_ids), agent_ids=agent_ids,
                  **overrides)


def test_agents_of_one_episode_share_its_id():
    batch = EpisodeBatch(**agent_fields([7, 7], ['pursuer_0', 'pursuer_1']))
    assert batch.agent_ids.tolist() == ['pursuer_0', 'pursuer_1']
    stats = batch.episode_stats()
    assert stats['episode_ids'].tolist() == [7, 7]
    assert stats['agent_ids'].tolist() == ['pursuer_0', 'pursuer_1']
    assert stats['returns'].tolist() == [6.0, 9.0]
    assert 'of 2 agents' in repr(batch)
    assert batch.padded()['agent_ids'].tolist() == ['pursuer_0',
                                                    'pursuer_1']
    # Without agent ids, the same two segments are one episode twice.
    with pytest.raises(ValueError, match='no segment may come twice'):
        EpisodeBatch(**agent_fields([7, 7], None))


def test_a_segment_twice_is_refused_per_agent():
    with pytest.raises(ValueError, match=(
            r"^episode_ids: segments 0 and 1 are the same steps of episode "
            r"7 of agent 'a' \(prior_steps 0\); no segment may come "
            r"twice$")):
        EpisodeBatch(**agent_fields([7, 7], ['a', 'a']))
    # An agent's segment after the one that ended its episode.
    with pytest.raises(ValueError, match=(
            r"^cut: segment 0 ends episode 7 of agent 3, but segment 1 has "
            r"later steps of it$")):
        EpisodeBatch(**agent_fields(
            [7, 7], [3, 3], starts=np.array([True, False]),
            prior_steps=np.array([0, 3]),
            prior_returns=np.array([0.0, 6.0])))


@pytest.mark.parametrize('agent_ids, pattern', [
    (['a'], r'agent_ids has shape \(1,\)'),
    ([0.5, 1.5], r'and dtype float64, expected \(2,\) ints or strings'),
])
def test_bad_agent_ids_are_refused(agent_ids, pattern):
    with pytest.raises(ValueError, match=pattern):
        EpisodeBatch(**agent_fields([0, 1], agent_ids))


def test_agent_ids_survive_concatenate_split_and_check():
    a = EpisodeBatch(**agent_fields([1, 1], ['x', 'y']))
    b = EpisodeBatch(**agent_fields([2, 2], ['x', 'yy']))
    joined = EpisodeBatch.concatenate(a, b)
    assert joined.agent_ids.tolist() == ['x', 'y', 'x', 'yy']
    assert [s.agent_ids.tolist() for s in joined.split()] == \
        [['x'], ['y'], ['x'], ['yy']]
    assert EpisodeBatch.concatenate(*joined.split()) == joined
    joined.check()
    # The same steps under other agent ids are another batch.
    assert a != EpisodeBatch(**agent_fields([1, 1], ['x', 'z']))
    assert a == EpisodeBatch(**agent_fields([1, 1], ['x', 'y']))
    single = EpisodeBatch(**fields())
    assert single.agent_ids is None
    with pytest.raises(ValueError, match=(
            r'^batch 1 does not have agent_ids and batch 0 does: a '
            r'multi-agent batch cannot be joined with a single-agent one$')):
        EpisodeBatch.concatenate(a, single)
