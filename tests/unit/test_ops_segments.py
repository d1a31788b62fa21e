"""Segment-id ops: positions restart per segment, MTP targets never cross a segment end, and the
TD errors / GAE / λ-returns of a packed row equal those of the unpacked rows (hand values)."""

import jax.numpy as jnp
import numpy as np
import pytest

from wmtp_jax import ops
from wmtp_jax.ops import segments as sg
from wmtp_jax.ops.mtp_loss import align_head_targets

SEG = jnp.asarray([[1, 1, 1, 2, 2, 0, 0], [1, 1, 1, 1, 1, 1, 1]])


def test_positions_starts_ends():
    np.testing.assert_array_equal(
        sg.segment_positions(SEG), [[0, 1, 2, 0, 1, 0, 1], [0, 1, 2, 3, 4, 5, 6]]
    )
    np.testing.assert_array_equal(sg.segment_starts(SEG)[0], [1, 0, 0, 1, 0, 1, 0])
    np.testing.assert_array_equal(sg.segment_ends(SEG)[0], [0, 0, 1, 0, 1, 0, 1])


def test_same_segment_ahead():
    np.testing.assert_array_equal(sg.same_segment_ahead(SEG, 1)[0], [1, 1, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(sg.same_segment_ahead(SEG, 2)[0], [1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(sg.same_segment_ahead(SEG, 2)[1], [1, 1, 1, 1, 1, 0, 0])
    assert not np.asarray(sg.same_segment_ahead(SEG, 7)).any()


def test_head_targets_stop_at_segment_end():
    labels = jnp.asarray([[5, 6, 7, 8, 9, -100, -100]])  # segment 2 starts with a labelled token
    am = (SEG[:1] > 0).astype(jnp.int32)
    _, mask, _ = align_head_targets(labels, am, 2, segment_ids=SEG[:1])
    np.testing.assert_array_equal(mask[0, :, 0], [1, 1, 0, 1, 0, 0, 0])  # head 1: t → t+1
    np.testing.assert_array_equal(mask[0, :, 1], [1, 0, 0, 0, 0, 0, 0])  # head 2: t → t+2
    _, crossing, _ = align_head_targets(labels, am, 2)
    assert float(crossing[0, 2, 0]) == 1.0  # without segments token 3 (next sequence) counts


def test_segment_mean_and_sum():
    x = jnp.asarray([[1.0, 2.0, 3.0, 10.0, 20.0, 7.0, 7.0]])
    mean, count = sg.segment_mean(x, jnp.ones_like(x), SEG[:1], 4)
    np.testing.assert_allclose(mean, [[7.0, 2.0, 15.0, 0.0]])
    np.testing.assert_allclose(count, [[2.0, 3.0, 2.0, 0.0]])


# a packed row [seq A (3 tokens, R=1) | seq B (2 tokens, R=0) | pad] against the unpacked rows
V_PACKED = jnp.asarray([[0.5, 0.7, 0.9, 0.2, 0.4, 0.3, 0.1]])
M_PACKED = jnp.asarray([[1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]])
R_TOKENS = jnp.asarray([[1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
V_ROWS = jnp.asarray([[0.5, 0.7, 0.9, 0.0], [0.2, 0.4, 0.0, 0.0]])
M_ROWS = jnp.asarray([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
R_ROWS = jnp.asarray([1.0, 0.0])


def unpack(x):
    x = np.asarray(x)[0]
    return np.asarray([list(x[:3]) + [0.0], list(x[3:5]) + [0.0, 0.0]])


def test_td_errors_reset_per_segment_hand_values():
    td = ops.compute_td_errors(V_PACKED, R_TOKENS, M_PACKED, 1.0, 0.5, segment_ids=SEG[:1])
    # A: [0.5−0.5, 0.7−0.5, 1−0.9]; B: [0.2−0.5 (v₋₁ = 0.5 again), 0−0.4 (terminal, R=0)]
    np.testing.assert_allclose(td[0], [0.0, 0.2, 0.1, -0.3, -0.4, 0.0, 0.0], atol=1e-6)
    rows = ops.compute_td_errors(V_ROWS, R_ROWS, M_ROWS, 1.0, 0.5)
    np.testing.assert_allclose(unpack(td), rows, atol=1e-6)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0)])
def test_gae_and_targets_reset_per_segment(gamma, lam):
    kw = dict(segment_ids=SEG[:1])
    adv = ops.compute_gae_advantage(V_PACKED, R_TOKENS, M_PACKED, gamma, lam, 0.5, **kw)
    tgt = ops.compute_td_targets(V_PACKED, R_TOKENS, M_PACKED, gamma, lam, 0.5, **kw)
    np.testing.assert_allclose(
        unpack(adv), ops.compute_gae_advantage(V_ROWS, R_ROWS, M_ROWS, gamma, lam, 0.5), atol=1e-6
    )
    np.testing.assert_allclose(
        unpack(tgt), ops.compute_td_targets(V_ROWS, R_ROWS, M_ROWS, gamma, lam, 0.5), atol=1e-6
    )
    assert float(adv[0, 5]) == 0.0 and float(adv[0, 6]) == 0.0


def test_gae_hand_value_second_segment():
    """λ = γ = 1 is not the MC shortcut here (λ = 0.5): B's A_0 = δ_0 + 0.5·δ_1, δ from B only."""
    adv = ops.compute_gae_advantage(V_PACKED, R_TOKENS, M_PACKED, 1.0, 0.5, 0.5, SEG[:1])
    d0, d1 = 0.2 - 0.5, 0.4 - 0.2
    np.testing.assert_allclose(adv[0, 3], d0 + 0.5 * d1, atol=1e-6)
    np.testing.assert_allclose(adv[0, 4], d1, atol=1e-6)


def test_lambda_return_resets_per_segment():
    g = ops.compute_lambda_return(V_PACKED, R_TOKENS, M_PACKED, 1.0, 0.8, segment_ids=SEG[:1])
    rows = ops.compute_lambda_return(V_ROWS, R_ROWS, M_ROWS, 1.0, 0.8)
    np.testing.assert_allclose(unpack(g), rows, atol=1e-6)
    np.testing.assert_allclose(g[0, 4], 0.0)  # B's terminal: R = 0, not A's 1
    np.testing.assert_allclose(g[0, 2], 1.0)
    with pytest.raises(ValueError, match="output_end_mask"):
        ops.compute_lambda_return(
            V_PACKED, R_TOKENS, M_PACKED, output_end_mask=M_PACKED, segment_ids=SEG[:1]
        )


def test_bad_segment_shape_fails():
    with pytest.raises(ValueError, match="segment_ids"):
        ops.compute_td_errors(V_PACKED, R_TOKENS, M_PACKED, segment_ids=SEG)
