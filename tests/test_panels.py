"""Tests for panel generation (P and Q replies) and the rule checkers."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netplay.lobbies.panels import (
    PANELS_PER_REPLY,
    ROW_WIDTH,
    ROWS_PER_REPLY,
    STARTING_BOARD_EMPTIES,
    STARTING_BOARD_ROWS,
    MatchPanels,
    garbage_rule_violations,
    play_rule_violations,
    starting_board_violations,
)

ALL_COLOUR_COUNTS = range(2, 8)
EMPTY_TOP = "000000"
# No example database: the suite must not leave files in the repository.
quick_property = settings(max_examples=200, deadline=None, database=None)


def rows_of(panels: str) -> list[str]:
    return [panels[start : start + ROW_WIDTH] for start in range(0, len(panels), ROW_WIDTH)]


def play_stream(
    match: MatchPanels, side: int, ncolors: int, requests: int, top_row: str = EMPTY_TOP
) -> list[tuple[str, str]]:
    """(top_row, reply) pairs of chained P requests, each resting on the previous reply."""
    exchanges = []
    for _ in range(requests):
        reply = match.play_panels(side, ncolors, top_row)
        assert reply is not None, f"play request on {top_row} with {ncolors} colours got None"
        exchanges.append((top_row, reply))
        top_row = reply[-ROW_WIDTH:]
    return exchanges


def garbage_stream(
    match: MatchPanels, side: int, ncolors: int, requests: int, top_row: str = EMPTY_TOP
) -> list[tuple[str, str]]:
    """(top_row, reply) pairs of chained Q requests, each resting on the previous reply."""
    exchanges = []
    for _ in range(requests):
        reply = match.garbage_panels(side, ncolors, top_row)
        assert reply is not None, f"garbage request on {top_row} with {ncolors} colours got None"
        exchanges.append((top_row, reply))
        top_row = reply[-ROW_WIDTH:]
    return exchanges


def stacked_rows(exchanges: list[tuple[str, str]]) -> list[str]:
    """The first top row followed by every generated row, bottom to top."""
    rows = [exchanges[0][0]]
    for _, reply in exchanges:
        rows.extend(rows_of(reply))
    return rows


def phases(rows: list[str]) -> list[tuple[bool, int]]:
    """(is_metal, length) runs over `rows`, dropping the last run since it may be cut short."""
    runs: list[tuple[bool, int]] = []
    for row in rows:
        is_metal = "8" in row
        if runs and runs[-1][0] == is_metal:
            runs[-1] = (is_metal, runs[-1][1] + 1)
        else:
            runs.append((is_metal, 1))
    return runs[:-1]


# --- play panels -----------------------------------------------------------------------


@pytest.mark.parametrize("ncolors", ALL_COLOUR_COUNTS)
def test_long_play_streams_obey_every_rule_for_every_colour_count(ncolors: int) -> None:
    match = MatchPanels(random.Random(ncolors))
    for side in (0, 1):
        for top_row, reply in play_stream(match, side, ncolors, 60):
            assert play_rule_violations(top_row, reply, ncolors) == []


def test_two_colour_play_streams_never_get_stuck() -> None:
    # Two colours are the only case where a metal row could leave nothing to put on it.
    for seed in range(6):
        match = MatchPanels(random.Random(seed))
        for top_row, reply in play_stream(match, seed % 2, 2, 150):
            assert play_rule_violations(top_row, reply, 2) == []


@pytest.mark.parametrize("ncolors", ALL_COLOUR_COUNTS)
def test_play_panels_never_repeat_the_panel_below(ncolors: int) -> None:
    rows = stacked_rows(play_stream(MatchPanels(random.Random(10 + ncolors)), 0, ncolors, 50))
    for lower, upper in zip(rows, rows[1:]):
        for below, panel in zip(lower, upper):
            if panel not in "08":
                assert panel != below


@pytest.mark.parametrize("ncolors", ALL_COLOUR_COUNTS)
def test_play_panels_never_line_up_three_equal_colours(ncolors: int) -> None:
    rows = stacked_rows(play_stream(MatchPanels(random.Random(20 + ncolors)), 1, ncolors, 50))
    for row in rows[1:]:
        for column in range(ROW_WIDTH - 2):
            trio = row[column : column + 3]
            assert not (trio[0] == trio[1] == trio[2] and trio[0] not in "08"), row


@pytest.mark.parametrize("ncolors", ALL_COLOUR_COUNTS)
def test_play_panels_use_only_the_allowed_colours_and_shock(ncolors: int) -> None:
    allowed = set("08") | {str(colour) for colour in range(1, ncolors + 1)}
    for _, reply in play_stream(MatchPanels(random.Random(30 + ncolors)), 0, ncolors, 50):
        assert len(reply) == PANELS_PER_REPLY
        assert set(reply) <= allowed


def test_first_metal_phase_comes_after_15_to_22_normal_rows() -> None:
    first_gaps = set()
    for seed in range(150):
        rows = stacked_rows(play_stream(MatchPanels(random.Random(seed)), 0, 5, 2))[1:]
        first_metal = next(index for index, row in enumerate(rows) if "8" in row)
        assert 15 <= first_metal <= 22
        first_gaps.add(first_metal)
    assert first_gaps == set(range(15, 23))


@pytest.mark.parametrize("ncolors", ALL_COLOUR_COUNTS)
def test_metal_phases_last_3_or_4_rows_between_gaps_of_7_to_10(ncolors: int) -> None:
    metal_lengths, later_gaps = set(), set()
    for seed in range(5):
        rows = stacked_rows(play_stream(MatchPanels(random.Random(seed)), 0, ncolors, 30))[1:]
        runs = phases(rows)
        assert runs[0][0] is False and 15 <= runs[0][1] <= 22
        for is_metal, length in runs[1:]:
            (metal_lengths if is_metal else later_gaps).add(length)
        assert [is_metal for is_metal, _ in runs] == [index % 2 == 1 for index in range(len(runs))]
    assert metal_lengths == {3, 4}
    assert later_gaps == {7, 8, 9, 10}


@pytest.mark.parametrize("ncolors", ALL_COLOUR_COUNTS)
def test_metal_rows_hold_one_shock_in_a_new_column_each_time(ncolors: int) -> None:
    rows = stacked_rows(play_stream(MatchPanels(random.Random(40 + ncolors)), 1, ncolors, 60))[1:]
    metal_rows = [row for row in rows if "8" in row]
    assert len(metal_rows) > 30
    for row in metal_rows:
        assert row.count("8") == 1
    columns = [row.index("8") for row in metal_rows]
    assert all(previous != current for previous, current in zip(columns, columns[1:]))
    assert set(columns) == set(range(ROW_WIDTH))


def test_each_side_keeps_its_own_metal_schedule() -> None:
    match = MatchPanels(random.Random(5))
    streams: dict[int, list[str]] = {0: [], 1: []}
    tops = {0: EMPTY_TOP, 1: EMPTY_TOP}
    # Interleave the sides unevenly so a shared counter would show up as broken phase lengths.
    for turn in range(90):
        side = 0 if turn % 3 else 1
        reply = match.play_panels(side, 4, tops[side])
        assert reply is not None
        streams[side].extend(rows_of(reply))
        tops[side] = reply[-ROW_WIDTH:]
    for rows in streams.values():
        runs = phases(rows)
        assert 15 <= runs[0][1] <= 22
        assert all(3 <= n <= 4 if metal else 7 <= n <= 10 for metal, n in runs[1:])


def test_garbage_requests_do_not_advance_the_play_schedule() -> None:
    for seed in range(20):
        match = MatchPanels(random.Random(seed))
        rows: list[str] = []
        top_row = EMPTY_TOP
        for _ in range(12):
            assert match.garbage_panels(0, 5, "123451") is not None
            reply = match.play_panels(0, 5, top_row)
            assert reply is not None
            rows.extend(rows_of(reply))
            top_row = reply[-ROW_WIDTH:]
        runs = phases(rows)
        assert 15 <= runs[0][1] <= 22
        assert all(3 <= n <= 4 if metal else 7 <= n <= 10 for metal, n in runs[1:])


# --- starting board --------------------------------------------------------------------


@pytest.mark.parametrize("ncolors", ALL_COLOUR_COUNTS)
def test_first_empty_top_row_request_gets_a_starting_board(ncolors: int) -> None:
    for seed in range(20):
        reply = MatchPanels(random.Random(seed)).play_panels(0, ncolors, EMPTY_TOP)
        assert reply is not None
        assert starting_board_violations(reply) == []
        assert play_rule_violations(EMPTY_TOP, reply, ncolors) == []
        rows = rows_of(reply)
        depths = []
        for column in range(ROW_WIDTH):
            cells = [row[column] for row in rows]
            depth = len(cells) - len("".join(cells).lstrip("0"))
            assert "0" not in cells[depth:]
            depths.append(depth)
        assert sum(depths) == STARTING_BOARD_EMPTIES
        assert max(depths) <= STARTING_BOARD_ROWS


def test_starting_board_is_shared_between_sides() -> None:
    board_cells = STARTING_BOARD_ROWS * ROW_WIDTH
    for seed in range(10):
        for first_side in (0, 1):
            match = MatchPanels(random.Random(seed))
            first = match.play_panels(first_side, 5, EMPTY_TOP)
            second = match.play_panels(1 - first_side, 5, EMPTY_TOP)
            assert first is not None and second is not None
            assert first[:board_cells] == second[:board_cells]
            assert first[board_cells:] != second[board_cells:]
            assert play_rule_violations(EMPTY_TOP, second, 5) == []
            assert starting_board_violations(second) == []


def test_starting_boards_are_independent_when_sharing_is_disabled() -> None:
    board_cells = STARTING_BOARD_ROWS * ROW_WIDTH
    for seed in range(10):
        match = MatchPanels(random.Random(seed), share_starting_board=False)
        first = match.play_panels(0, 5, EMPTY_TOP)
        second = match.play_panels(1, 5, EMPTY_TOP)
        assert first is not None and second is not None
        assert starting_board_violations(first) == []
        assert starting_board_violations(second) == []
        assert first[:board_cells] != second[:board_cells]


def test_only_the_first_play_request_of_a_side_gets_a_starting_board() -> None:
    match = MatchPanels(random.Random(3))
    first = match.play_panels(0, 5, EMPTY_TOP)
    assert first is not None and starting_board_violations(first) == []
    later = match.play_panels(0, 5, EMPTY_TOP)
    assert later is not None and "0" not in later
    assert play_rule_violations(EMPTY_TOP, later, 5) == []
    # Side 1 starts on another top row, so its later empty-top request is ordinary too.
    opening = match.play_panels(1, 5, "123412")
    assert opening is not None and "0" not in opening
    ordinary = match.play_panels(1, 5, EMPTY_TOP)
    assert ordinary is not None and "0" not in ordinary


def test_garbage_requests_do_not_use_up_the_starting_board() -> None:
    match = MatchPanels(random.Random(4))
    garbage = match.garbage_panels(0, 5, EMPTY_TOP)
    assert garbage is not None and "0" not in garbage
    reply = match.play_panels(0, 5, EMPTY_TOP)
    assert reply is not None and starting_board_violations(reply) == []


# --- garbage panels --------------------------------------------------------------------


@pytest.mark.parametrize("ncolors", ALL_COLOUR_COUNTS)
def test_long_garbage_streams_obey_every_rule_for_every_colour_count(ncolors: int) -> None:
    match = MatchPanels(random.Random(50 + ncolors))
    exchanges = garbage_stream(match, 0, ncolors, 60)
    for top_row, reply in exchanges:
        assert garbage_rule_violations(top_row, reply, ncolors) == []
    rows = stacked_rows(exchanges)
    colours = {str(colour) for colour in range(1, ncolors + 1)}
    for lower, upper in zip(rows, rows[1:]):
        assert set(upper) <= colours
        assert all(left != right for left, right in zip(upper, upper[1:]))
        assert all(below != panel for below, panel in zip(lower, upper))


# --- unsatisfiable rows ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "top_row"), [("garbage", "112233"), ("play", "111222"), ("play", "222111")]
)
def test_impossible_row_zero_returns_none_promptly(kind: str, top_row: str) -> None:
    match = MatchPanels(random.Random(0))
    request = match.garbage_panels if kind == "garbage" else match.play_panels
    started = time.perf_counter()
    for side in (0, 1):
        assert request(side, 2, top_row) is None
    assert time.perf_counter() - started < 0.05


def twin_matches(seed: int) -> tuple[MatchPanels, MatchPanels]:
    return MatchPanels(random.Random(seed)), MatchPanels(random.Random(seed))


def test_failed_play_requests_leave_the_metal_schedule_untouched() -> None:
    tested, twin = twin_matches(8)
    top_row = EMPTY_TOP
    for _ in range(12):
        reply = tested.play_panels(0, 2, top_row)
        assert reply is not None and reply == twin.play_panels(0, 2, top_row)
        top_row = reply[-ROW_WIDTH:]
        # Fail between every pair of good requests, so some failures land in metal phases.
        assert tested.play_panels(0, 2, "111222") is None
        assert tested.play_panels(0, 2, "222111") is None
        # Only the random stream moved; once it is lined up again both matches must agree.
        tested.rng.setstate(twin.rng.getstate())


def test_failed_first_play_request_keeps_the_starting_board_available() -> None:
    tested, twin = twin_matches(9)
    assert tested.play_panels(0, 2, "111222") is None
    tested.rng.setstate(twin.rng.getstate())
    reply = tested.play_panels(0, 2, EMPTY_TOP)
    assert reply is not None and starting_board_violations(reply) == []
    assert reply == twin.play_panels(0, 2, EMPTY_TOP)
    # The other side's failure must not disturb the stored board either.
    assert tested.play_panels(1, 2, "111222") is None
    shared = tested.play_panels(1, 2, EMPTY_TOP)
    assert shared is not None
    assert shared[: STARTING_BOARD_ROWS * ROW_WIDTH] == reply[: STARTING_BOARD_ROWS * ROW_WIDTH]


# --- reproducibility -------------------------------------------------------------------


def run_fixed_script(seed: int) -> list[str | None]:
    match = MatchPanels(random.Random(seed))
    replies: list[str | None] = []
    tops = [EMPTY_TOP, EMPTY_TOP]
    for turn in range(30):
        side = turn % 2
        replies.append(match.garbage_panels(side, 4, "123412"))
        reply = match.play_panels(side, 3 + side, tops[side])
        assert reply is not None
        replies.append(reply)
        tops[side] = reply[-ROW_WIDTH:]
    replies.append(match.play_panels(0, 2, "111222"))
    return replies


def test_a_fixed_seed_reproduces_identical_panels() -> None:
    assert run_fixed_script(2024) == run_fixed_script(2024)
    assert run_fixed_script(2024) != run_fixed_script(2025)


# --- arbitrary top rows ----------------------------------------------------------------

top_rows = st.text(alphabet="0123456789", min_size=ROW_WIDTH, max_size=ROW_WIDTH)


@quick_property
@given(
    seed=st.integers(0, 2**32),
    ncolors=st.integers(2, 7),
    top_row=top_rows,
    warm_up=st.integers(0, 3),
)
def test_any_top_row_gives_none_or_rule_abiding_play_panels(
    seed: int, ncolors: int, top_row: str, warm_up: int
) -> None:
    match = MatchPanels(random.Random(seed))
    # Earlier requests put the schedule at a random spot, possibly inside a metal phase.
    if warm_up:
        play_stream(match, 0, ncolors, warm_up)
    reply = match.play_panels(0, ncolors, top_row)
    if ncolors >= 3:
        assert reply is not None
    if reply is not None:
        assert play_rule_violations(top_row, reply, ncolors) == []
        follow_up = match.play_panels(0, ncolors, reply[-ROW_WIDTH:])
        assert follow_up is not None
        assert play_rule_violations(reply[-ROW_WIDTH:], follow_up, ncolors) == []


@quick_property
@given(seed=st.integers(0, 2**32), ncolors=st.integers(2, 7), top_row=top_rows)
def test_any_top_row_gives_none_or_rule_abiding_garbage_panels(
    seed: int, ncolors: int, top_row: str
) -> None:
    match = MatchPanels(random.Random(seed))
    reply = match.garbage_panels(1, ncolors, top_row)
    if ncolors >= 3:
        assert reply is not None
    if reply is not None:
        assert garbage_rule_violations(top_row, reply, ncolors) == []


def test_side_must_be_zero_or_one() -> None:
    match = MatchPanels(random.Random(0))
    with pytest.raises(ValueError):
        match.play_panels(2, 5, EMPTY_TOP)
    with pytest.raises(ValueError):
        match.garbage_panels(-1, 5, EMPTY_TOP)


# --- the checkers catch broken input ---------------------------------------------------


def valid_play_reply() -> tuple[str, str]:
    match = MatchPanels(random.Random(77))
    play_stream(match, 0, 4, 1)
    top_row = "123412"
    reply = match.play_panels(0, 4, top_row)
    assert reply is not None and play_rule_violations(top_row, reply, 4) == []
    return top_row, reply


def with_panel(panels: str, index: int, digit: str) -> str:
    return panels[:index] + digit + panels[index + 1 :]


def test_play_checker_flags_a_colour_repeating_the_panel_below() -> None:
    top_row, reply = valid_play_reply()
    broken = with_panel(reply, 0, top_row[0])
    assert any("below" in problem for problem in play_rule_violations(top_row, broken, 4))


def test_play_checker_flags_three_equal_colours_in_a_row() -> None:
    top_row = "444444"
    broken = "111" + "232" + "".join("121212" if i % 2 else "212121" for i in range(19))
    assert any("third" in problem for problem in play_rule_violations(top_row, broken, 3))


def test_play_checker_flags_bad_colours_shocks_empties_and_shape() -> None:
    top_row, reply = valid_play_reply()
    assert play_rule_violations(top_row, with_panel(reply, 60, "6"), 4)
    assert play_rule_violations(top_row, with_panel(reply, 60, "9"), 4)
    two_shocks = with_panel(with_panel(reply, 60, "8"), 62, "8")
    assert any("shock" in problem for problem in play_rule_violations(top_row, two_shocks, 4))
    floating_empty = with_panel(reply, 6, "0")
    assert any("empty" in problem for problem in play_rule_violations(top_row, floating_empty, 4))
    high_empty = with_panel(reply, 60, "0")
    assert any("empty" in problem for problem in play_rule_violations(top_row, high_empty, 4))
    assert play_rule_violations(top_row, reply[:-1], 4)
    assert play_rule_violations(top_row, with_panel(reply, 5, "x"), 4)
    assert play_rule_violations("12345", reply, 4)


def test_garbage_checker_flags_each_broken_rule() -> None:
    match = MatchPanels(random.Random(6))
    top_row = "313131"
    reply = match.garbage_panels(0, 3, top_row)
    assert reply is not None and garbage_rule_violations(top_row, reply, 3) == []
    left_clash = with_panel(reply, 7, reply[6])
    assert any("left" in problem for problem in garbage_rule_violations(top_row, left_clash, 3))
    below_clash = with_panel(reply, 0, top_row[0])
    assert any("below" in problem for problem in garbage_rule_violations(top_row, below_clash, 3))
    for digit in "0489":
        assert garbage_rule_violations(top_row, with_panel(reply, 30, digit), 3)
    assert garbage_rule_violations(top_row, reply + "1", 3)


def test_starting_board_checker_flags_wrong_count_gaps_and_high_empties() -> None:
    reply = MatchPanels(random.Random(12)).play_panels(0, 5, EMPTY_TOP)
    assert reply is not None and starting_board_violations(reply) == []
    no_board = MatchPanels(random.Random(12)).play_panels(0, 5, "123451")
    assert no_board is not None and starting_board_violations(no_board)
    first_empty = reply.index("0")
    assert starting_board_violations(with_panel(reply, first_empty, "3"))
    eleven_empties = "0" * 11 + "1" * (PANELS_PER_REPLY - 11)
    assert starting_board_violations(eleven_empties)
    high_empty = "".join(
        "000000" if row < 2 else ("0" if row == 10 else "1") + "23123"
        for row in range(ROWS_PER_REPLY)
    )
    assert any("stacked" in problem for problem in starting_board_violations(high_empty))
    tower = "".join(
        ("0" if row < 8 else "1") + ("0" if row < 4 else "2") + "3123"
        for row in range(ROWS_PER_REPLY)
    )
    assert any("above the starting board" in problem for problem in starting_board_violations(tower))
