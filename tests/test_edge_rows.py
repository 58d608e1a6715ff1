"""RowTables (edge/state.py): streams' arrays kept as rows of shared tables, as the batched runner
and the scorer use them — values survive adoption, replacement, growth and row reuse."""

from __future__ import annotations

import gc

import numpy as np

from edge.state import RowTables, StreamState


def _get(st: StreamState) -> list[np.ndarray]:
    return [st.extra["x"]]


def _put(st: StreamState, r: int, tables: list[np.ndarray]) -> None:
    st.extra["x"] = tables[0][r]


def stream(value: float) -> StreamState:
    return StreamState(state=[], extra={"x": np.full(3, value)})


def test_rows_adopt_arrays_as_views_and_keep_their_values() -> None:
    rt = RowTables([(3,)], np.float64, _get, _put, capacity=4)
    sts = [stream(float(i)) for i in range(3)]
    idx = rt.rows(sts)
    assert len(set(idx.tolist())) == 3
    for i, st in enumerate(sts):
        assert st.extra["x"].base is rt.tables[0]
        np.testing.assert_array_equal(rt.tables[0][idx[i]], [i, i, i])
    rt.tables[0][idx] += 10.0  # a batched update is what the streams see
    assert [st.extra["x"][0] for st in sts] == [10.0, 11.0, 12.0]
    assert rt.rows(sts).tolist() == idx.tolist()  # stable while nothing changes


def test_a_replaced_array_is_copied_in_again() -> None:
    rt = RowTables([(3,)], np.float64, _get, _put, capacity=4)
    st = stream(1.0)
    r = rt.row(st)
    st.extra["x"] = np.full(3, 7.0)  # restored from a checkpoint, say
    assert rt.row(st) == r
    np.testing.assert_array_equal(rt.tables[0][r], [7.0, 7.0, 7.0])
    assert st.extra["x"].base is rt.tables[0]


def test_growth_keeps_values_and_points_streams_at_the_new_table() -> None:
    rt = RowTables([(3,)], np.float64, _get, _put, capacity=2)
    sts = [stream(float(i)) for i in range(5)]
    idx = rt.rows(sts)
    assert rt.tables[0].shape[0] >= 5
    for i, st in enumerate(sts):
        assert st.extra["x"].base is rt.tables[0]
        np.testing.assert_array_equal(rt.tables[0][idx[i]], [i, i, i])
    rt.tables[0][idx] = 0.0
    assert all(st.extra["x"].sum() == 0.0 for st in sts)


def test_rows_of_streams_gone_are_reused_and_a_new_owner_of_an_old_view_gets_its_own_row(
) -> None:
    rt = RowTables([(3,)], np.float64, _get, _put, capacity=2)
    a, b = stream(1.0), stream(2.0)
    rt.rows([a, b])
    # a reset that keeps the array: a new state object holding a's view
    a2 = StreamState(state=[], extra={"x": a.extra["x"]})
    del a
    gc.collect()
    r2 = rt.row(a2)  # the table is full: a's row is free again, or the table grows
    np.testing.assert_array_equal(rt.tables[0][r2], [1.0, 1.0, 1.0])
    assert rt.row(b) != r2
    rt.tables[0][r2] = 5.0
    np.testing.assert_array_equal(b.extra["x"], [2.0, 2.0, 2.0])
    np.testing.assert_array_equal(a2.extra["x"], [5.0, 5.0, 5.0])
    assert rt.tables[0].shape[0] == 2  # reused, not grown
