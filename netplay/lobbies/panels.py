"""Panel generation for P (play) and Q (garbage) requests, and the rules they obey.

A reply is 120 ASCII digits: 20 rows of 6 panels, row 0 first, row 0 resting on
the 6-digit top row the client sent.  Digits 1..7 are colours, 0 is an empty
cell (only in a starting board) and 8 is a shock ("metal") panel.

Rows are built by a depth-first search over the 6 cells, trying at most
``ncolors`` candidates per cell, so a row costs at most ncolors**6 steps even
when no assignment exists; there is no rejection sampling anywhere.

Why only row 0 can be unsatisfiable (the top row is arbitrary, every later row
sits on a row this module produced):

* ncolors >= 3: a cell forbids at most two colours (the one below and either
  the left neighbour or the colour of a two-long run on its left), so some
  colour is always free and the search never even backtracks.
* ncolors == 2, garbage: a valid row alternates, and its complement is a valid
  row on top of it.
* ncolors == 2, play: the complement of a valid all-colour row is valid on top
  of it.  A shock panel in the row below leaves the cell above it free, and
  that free cell is stuck only when the row below reads ``x x 8 y y`` with
  x != y (columns 2 or 3 holding the 8): both colours then complete a run of
  three.  Metal rows with two colours therefore never take that shape.  With
  it excluded, a normal row always fits (complement, free cell has a colour)
  and a metal row always fits with its 8 in one of columns 0, 1, 4, 5 other
  than the previous metal column, because an 8 there cannot sit in the middle
  of the shape.  Exhaustive enumeration of all two-colour rows confirms both
  this and that excluding the shape never removes the last option for row 0.
"""

from __future__ import annotations

import random

import attrs

ROW_WIDTH = 6
ROWS_PER_REPLY = 20
PANELS_PER_REPLY = ROW_WIDTH * ROWS_PER_REPLY
STARTING_BOARD_ROWS = 7
STARTING_BOARD_EMPTIES = 12

EMPTY = 0
SHOCK = 8
EMPTY_TOP_ROW = "0" * ROW_WIDTH

FIRST_NORMAL_ROWS = (15, 22)
LATER_NORMAL_ROWS = (7, 10)
METAL_ROWS = (3, 4)

_DIGIT_CHARS = "0123456789"
_COLOURS_BY_COUNT = {count: tuple(range(1, count + 1)) for count in range(1, 10)}
_ALL_COLUMNS = tuple(range(ROW_WIDTH))


@attrs.define
class _ShockSchedule:
    """Where one side stands in its endless normal/metal phase cycle."""

    started: bool = False
    in_metal_phase: bool = False
    rows_left_in_phase: int = 0
    last_metal_column: int | None = None

    def next_row_is_metal(self, rng: random.Random) -> bool:
        """Advance by one play row and tell whether that row is a metal row."""
        if not self.started:
            self.started = True
            self.rows_left_in_phase = rng.randint(*FIRST_NORMAL_ROWS)
        elif self.rows_left_in_phase == 0:
            self.in_metal_phase = not self.in_metal_phase
            bounds = METAL_ROWS if self.in_metal_phase else LATER_NORMAL_ROWS
            self.rows_left_in_phase = rng.randint(*bounds)
        self.rows_left_in_phase -= 1
        return self.in_metal_phase


@attrs.frozen
class _StartingBoard:
    """Rows 0..6 of a starting board before carving, and how deep each column is emptied."""

    rows: tuple[tuple[int, ...], ...]
    empty_depths: tuple[int, ...]


@attrs.define(eq=False)
class MatchPanels:
    """Panel state of one match: the shared starting board and each side's shock schedule."""

    rng: random.Random
    share_starting_board: bool = True
    _schedules: list[_ShockSchedule] = attrs.field(
        init=False, factory=lambda: [_ShockSchedule(), _ShockSchedule()]
    )
    _had_play_request: list[bool] = attrs.field(init=False, factory=lambda: [False, False])
    _shared_board: _StartingBoard | None = attrs.field(init=False, default=None)

    def play_panels(self, side: int, ncolors: int, top_row: str) -> str | None:
        """120 digits answering a P request of `side` (0 or 1), or None if no row 0 satisfies the rules."""
        _check_side(side)
        wants_board = not self._had_play_request[side] and top_row == EMPTY_TOP_ROW
        board = self._shared_board if wants_board and self.share_starting_board else None
        # Work on a copy so that a failed request leaves the schedule as it was.
        schedule = attrs.evolve(self._schedules[side])
        rows = _play_rows(
            self.rng, ncolors, _digits_of(top_row), schedule, board.rows if board else ()
        )
        if rows is None:
            return None
        if wants_board:
            if board is None:
                board = _StartingBoard(
                    rows=tuple(tuple(row) for row in rows[:STARTING_BOARD_ROWS]),
                    empty_depths=_random_empty_depths(self.rng),
                )
                if self.share_starting_board:
                    self._shared_board = board
            _carve_empties(rows, board.empty_depths)
        self._schedules[side] = schedule
        self._had_play_request[side] = True
        return _rows_to_text(rows)

    def garbage_panels(self, side: int, ncolors: int, top_row: str) -> str | None:
        """120 digits answering a Q request, or None if unsatisfiable."""
        _check_side(side)
        colours = _COLOURS_BY_COUNT[ncolors]
        below = _digits_of(top_row)
        rows = []
        for _ in range(ROWS_PER_REPLY):
            row = _search_row(self.rng, colours, below, None, garbage=True, avoid_stranding=False)
            if row is None:
                return None
            rows.append(row)
            below = row
        return _rows_to_text(rows)


def _check_side(side: int) -> None:
    if side not in (0, 1):
        raise ValueError(f"side must be 0 or 1, not {side!r}")


def _digits_of(text: str) -> list[int]:
    return [ord(character) - 48 for character in text]


def _rows_to_text(rows: list[list[int]]) -> str:
    return "".join([_DIGIT_CHARS[panel] for row in rows for panel in row])


def _play_rows(
    rng: random.Random,
    ncolors: int,
    below: list[int],
    schedule: _ShockSchedule,
    fixed_prefix: tuple[tuple[int, ...], ...],
) -> list[list[int]] | None:
    """All 20 play rows, the first ones copied from `fixed_prefix`; None if row 0 is impossible."""
    colours = _COLOURS_BY_COUNT[ncolors]
    # Only two colours can paint a metal row into a corner (see module docstring).
    avoid_stranding = ncolors == 2
    rows: list[list[int]] = []
    for index in range(ROWS_PER_REPLY):
        is_metal = schedule.next_row_is_metal(rng)
        if index < len(fixed_prefix):
            # The first normal phase (>= 15 rows) outlasts a starting board, so no metal here.
            row: list[int] | None = list(fixed_prefix[index])
        elif is_metal:
            row = None
            columns = [column for column in _ALL_COLUMNS if column != schedule.last_metal_column]
            while columns and row is None:
                column = columns.pop(rng.randrange(len(columns)))
                row = _search_row(rng, colours, below, column, False, avoid_stranding)
            if row is None:
                return None
            schedule.last_metal_column = column
        else:
            row = _search_row(rng, colours, below, None, False, avoid_stranding)
            if row is None:
                return None
        rows.append(row)
        below = row
    return rows


def _search_row(
    rng: random.Random,
    colours: tuple[int, ...],
    below: list[int],
    shock_column: int | None,
    garbage: bool,
    avoid_stranding: bool,
) -> list[int] | None:
    """One row over `below` found by depth-first search with random candidate order, or None."""
    row = [0] * ROW_WIDTH

    def fill_from(column: int) -> bool:
        if column == ROW_WIDTH:
            return not (avoid_stranding and shock_column is not None and _strands_next_row(row))
        if column == shock_column:
            row[column] = SHOCK
            return fill_from(column + 1)
        if garbage:
            sideways = row[column - 1] if column else EMPTY
        elif column >= 2 and row[column - 1] == row[column - 2]:
            # A shock pair yields SHOCK here, which no colour equals: 8s break runs for free.
            sideways = row[column - 1]
        else:
            sideways = EMPTY
        straight_below = below[column]
        candidates = [
            colour for colour in colours if colour != straight_below and colour != sideways
        ]
        while candidates:
            row[column] = candidates.pop(rng.randrange(len(candidates)))
            if fill_from(column + 1):
                return True
        return False

    return row if fill_from(0) else None


def _strands_next_row(row: list[int]) -> bool:
    """True if, with two colours, no play row at all could sit on top of `row`."""
    for shock_column in (2, 3):
        if (
            row[shock_column] == SHOCK
            and row[shock_column - 2] == row[shock_column - 1]
            and row[shock_column + 1] == row[shock_column + 2]
            and row[shock_column - 1] != row[shock_column + 1]
        ):
            return True
    return False


def _random_empty_depths(rng: random.Random) -> tuple[int, ...]:
    """How many empties each column gets, placing the 12 one at a time in non-full columns."""
    depths = [0] * ROW_WIDTH
    for _ in range(STARTING_BOARD_EMPTIES):
        open_columns = [c for c in _ALL_COLUMNS if depths[c] < STARTING_BOARD_ROWS]
        depths[rng.choice(open_columns)] += 1
    return tuple(depths)


def _carve_empties(rows: list[list[int]], empty_depths: tuple[int, ...]) -> None:
    # Colours above an empty never clash with it, so carving keeps every rule intact.
    for column, depth in enumerate(empty_depths):
        for row_index in range(depth):
            rows[row_index][column] = EMPTY


def _rows_on_top_of(top_row: str, panels: str) -> tuple[list[str], list[list[int]]]:
    """Shape problems of a reply, or none and its rows of digits, the top row first."""
    problems = _shape_violations("top row", top_row, ROW_WIDTH)
    problems += _shape_violations("panels", panels, PANELS_PER_REPLY)
    if problems:
        return problems, []
    grid = _digits_of(panels)
    return [], [_digits_of(top_row)] + [
        grid[start : start + ROW_WIDTH] for start in range(0, PANELS_PER_REPLY, ROW_WIDTH)
    ]


def _shape_violations(label: str, text: str, length: int) -> list[str]:
    if len(text) != length:
        return [f"{label} has {len(text)} characters, expected {length}"]
    if not (text.isascii() and text.isdigit()):
        return [f"{label} holds characters other than ASCII digits: {text!r}"]
    return []


def _where(row_index: int, column: int) -> str:
    return f"row {row_index} column {column}"


def play_rule_violations(top_row: str, panels: str, ncolors: int) -> list[str]:
    """Every way `panels` breaks the play-panel rules on top of `top_row`; empty if none.

    Checks single replies only: colours in 1..ncolors, no colour equal to the
    panel below, no three equal colours side by side, at most one 8 per row,
    and empties only inside the starting-board rows, each resting on an empty.
    The metal schedule spans requests and is not checked here.
    """
    problems, rows = _rows_on_top_of(top_row, panels)
    for row_index, (below, row) in enumerate(zip(rows, rows[1:])):
        if row.count(SHOCK) > 1:
            problems.append(f"row {row_index} holds {row.count(SHOCK)} shock panels")
        for column, panel in enumerate(row):
            where = _where(row_index, column)
            if panel == EMPTY:
                if row_index >= STARTING_BOARD_ROWS:
                    problems.append(f"{where}: empty above the starting-board rows")
                elif below[column] != EMPTY:
                    problems.append(f"{where}: empty resting on panel {below[column]}")
                continue
            if panel == SHOCK:
                continue
            if panel > ncolors:
                problems.append(f"{where}: colour {panel} outside 1..{ncolors}")
            if panel == below[column]:
                problems.append(f"{where}: colour {panel} repeats the panel below")
            if column >= 2 and row[column - 1] == row[column - 2] == panel:
                problems.append(f"{where}: third {panel} in a row")
    return problems


def garbage_rule_violations(top_row: str, panels: str, ncolors: int) -> list[str]:
    """Every way `panels` breaks the garbage-panel rules on top of `top_row`; empty if none.

    Every panel must be a colour in 1..ncolors differing from its left
    neighbour and from the panel below it.
    """
    problems, rows = _rows_on_top_of(top_row, panels)
    for row_index, (below, row) in enumerate(zip(rows, rows[1:])):
        for column, panel in enumerate(row):
            where = _where(row_index, column)
            if not 1 <= panel <= ncolors:
                problems.append(f"{where}: panel {panel} is not a colour in 1..{ncolors}")
            if column and panel == row[column - 1]:
                problems.append(f"{where}: colour {panel} repeats its left neighbour")
            if panel == below[column]:
                problems.append(f"{where}: colour {panel} repeats the panel below")
    return problems


def starting_board_violations(panels: str) -> list[str]:
    """Every way `panels` fails to start with a starting board; empty if none.

    Rows 0..6 must hold exactly 12 empties, each column's empties forming an
    unbroken run up from row 0, and no row above them may hold an empty.
    """
    problems = _shape_violations("panels", panels, PANELS_PER_REPLY)
    if problems:
        return problems
    grid = _digits_of(panels)
    board_cells = STARTING_BOARD_ROWS * ROW_WIDTH
    empties_in_board = grid[:board_cells].count(EMPTY)
    if empties_in_board != STARTING_BOARD_EMPTIES:
        problems.append(
            f"starting board holds {empties_in_board} empties, expected {STARTING_BOARD_EMPTIES}"
        )
    for column in _ALL_COLUMNS:
        column_panels = grid[column::ROW_WIDTH]
        depth = 0
        while depth < len(column_panels) and column_panels[depth] == EMPTY:
            depth += 1
        if depth > STARTING_BOARD_ROWS:
            problems.append(f"column {column}: {depth} empties reach above the starting board")
        stray = [
            row_index
            for row_index in range(depth, ROWS_PER_REPLY)
            if column_panels[row_index] == EMPTY
        ]
        if stray:
            problems.append(f"column {column}: empties at rows {stray} are not stacked on row 0")
    return problems
