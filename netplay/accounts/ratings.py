"""Ranked play for the 2022 client: Elo ratings, placement, leagues, approval.

Theory of operation
-------------------
Every player has a :class:`Standing`.  A new player is *in placement*: their
ranked games move a provisional ``placement_rating`` (Elo with
:data:`PLACEMENT_MATCH_K`, starting at :data:`DEFAULT_RATING`) and nothing
else.  The game that makes :data:`PLACEMENT_MATCH_COUNT_REQUIREMENT` ranked
games completes placement: the provisional rating becomes the rating, and only
then do the *placed* opponents of those placement games get their share, each
game settled as an Elo game (k = :data:`PLACED_K`) between the opponent's
rating at the time and the newcomer's final rating.  Between two placed
players a game is plain Elo with k = :data:`PLACED_K`.  Draws change nothing.

Which games may be ranked is :func:`approve_ranked`; under the 2022 rule a game
between two players in placement is never approved, so a placement match is
always against an already placed player.  The ``relaxed`` rule also approves
games between two players in placement (each rated against the other's
provisional rating), so that a server with no placed player can start.

These are the 2022 server's rules with its bugs fixed: every ranked game is
counted once in ``ranked_games_played``, wins are counted in
``ranked_games_won``, a newcomer's rating is never zeroed, a placed player's
rating is never rounded in storage, each player's league comes from their own
rating, two players who are not logged in are not "the same account", and
``is_you`` marks the asker in the leaderboard.  Ratings are stored unrounded;
they are rounded half away from zero only where they are shown.

Everything here is pure: no I/O, no clock.
"""

from __future__ import annotations

import enum
import math
from typing import Iterable, Sequence

import attrs

DEFAULT_RATING = 1500
RATING_SPREAD_MODIFIER = 400
ALLOWABLE_RATING_SPREAD_MULTIPLIER = 0.9
ALLOWABLE_RATING_SPREAD = RATING_SPREAD_MODIFIER * ALLOWABLE_RATING_SPREAD_MULTIPLIER
PLACEMENT_MATCH_COUNT_REQUIREMENT = 30
PLACEMENT_MATCH_K = 50
PLACED_K = 10
MIN_LEVEL_FOR_RANKED = 1
MAX_LEVEL_FOR_RANKED = 10

# (league, lowest rating in it), in increasing order.
LEAGUES: tuple[tuple[str, int], ...] = (
    ("Newcomer", -1000),
    ("Copper", 1),
    ("Bronze", 1125),
    ("Silver", 1275),
    ("Gold", 1425),
    ("Platinum", 1575),
    ("Diamond", 1725),
    ("Master", 1875),
    ("Grandmaster", 2025),
)

# The texts the 2022 client shows, word for word as the 2022 server sends them.
NEITHER_PLACED = (
    "Neither player has finished enough placement matches against already ranked players"
)
SAME_ACCOUNT = "Players cannot use the same account"
TOO_FAR_APART = "Players' ratings are too far apart"
LEVEL_OUT_OF_RANGE = (
    f"Only levels between {MIN_LEVEL_FOR_RANKED} and {MAX_LEVEL_FOR_RANKED}"
    " are allowed for ranked play."
)
LEVELS_DIFFER = "Levels don't match"
NEWCOMER_CAVEAT = (
    "Note: Rating adjustments for these matches will be processed when the newcomer"
    " finishes placement."
)


def didnt_log_in(name: str) -> str:
    return f"{name} didn't log in"


def doesnt_want_ranked(name: str) -> str:
    return f"{name} doesn't want ranked"


def placement_progress(games_played: int) -> str:
    return f"{games_played}/{PLACEMENT_MATCH_COUNT_REQUIREMENT} placement matches played."


class PlacementRule(enum.Enum):
    """Which games between players in placement may be ranked (operator setting)."""

    CLASSIC = "2022"  # only against an already placed player, as in 2022
    RELAXED = "relaxed"  # also two players in placement: lets a fresh server rank games


# -- numbers ---------------------------------------------------------------------


def round_rating(rating: float) -> int:
    """``rating`` rounded half away from zero, as the 2022 server rounds for display."""
    if rating >= 0:
        return math.floor(rating + 0.5)
    return math.ceil(rating - 0.5)


def league(rating: float | None) -> str:
    """The league of a (displayed) rating; None is a newcomer."""
    if rating is None:
        return LEAGUES[0][0]
    name = LEAGUES[0][0]
    for candidate, lowest in LEAGUES:
        if rating >= lowest:
            name = candidate
    return name


def expected_outcome(rating: float, opponent_rating: float) -> float:
    """Elo's expected score of a player rated ``rating`` against ``opponent_rating``."""
    return 1 / (1 + 10 ** ((opponent_rating - rating) / RATING_SPREAD_MODIFIER))


def adjusted_rating(rating: float, opponent_rating: float, outcome: float, k: float) -> float:
    """The rating after one game; ``outcome`` is 1 for a win, 0 for a loss.  Unrounded."""
    return rating + k * (outcome - expected_outcome(rating, opponent_rating))


# -- standings -------------------------------------------------------------------


@attrs.frozen
class Standing:
    """A player's ranked record.  A player who never played ranked has the defaults."""

    rating: float = DEFAULT_RATING  # meaningful once placement_done
    placement_done: bool = False
    placement_rating: float = DEFAULT_RATING  # the provisional rating during placement
    ranked_games_played: int = 0
    ranked_games_won: int = 0

    @property
    def current_rating(self) -> float:
        """The rating games are rated against: the provisional one during placement."""
        return self.rating if self.placement_done else self.placement_rating

    @property
    def placement_games_played(self) -> int:
        """Placement games so far: every ranked game a player in placement has played."""
        return 0 if self.placement_done else self.ranked_games_played


@attrs.frozen
class PlacementMatch:
    """A newcomer's placement game against a player who was placed at the time.

    It is settled for the opponent when the newcomer finishes placement.
    """

    opponent_user_id: str
    opponent_rating: float  # the opponent's rating when the game was played
    opponent_won: bool


def rate_game(first: Standing, second: Standing, winner: int) -> tuple[Standing, Standing]:
    """Both standings after a ranked game that ``winner`` (1 or 2) won.

    Settling a completed placement with :func:`settle_placement` is the
    caller's next step, when either result has just become ``placement_done``
    while its standing before was not.
    """
    if winner not in (1, 2):
        raise ValueError(f"a rated game has a winner, 1 or 2, not {winner!r}")
    return (
        _rate_one(first, second, 1 if winner == 1 else 0),
        _rate_one(second, first, 1 if winner == 2 else 0),
    )


def _rate_one(player: Standing, opponent: Standing, outcome: int) -> Standing:
    played = player.ranked_games_played + 1
    won = player.ranked_games_won + outcome
    if player.placement_done:
        if opponent.placement_done:
            rating = adjusted_rating(player.rating, opponent.rating, outcome, PLACED_K)
        else:
            rating = player.rating  # settled when the newcomer finishes placement
        return attrs.evolve(player, rating=rating, ranked_games_played=played, ranked_games_won=won)
    placement_rating = adjusted_rating(
        player.placement_rating, opponent.current_rating, outcome, PLACEMENT_MATCH_K
    )
    done = played >= PLACEMENT_MATCH_COUNT_REQUIREMENT
    return attrs.evolve(
        player,
        rating=placement_rating if done else player.rating,
        placement_done=done,
        placement_rating=placement_rating,
        ranked_games_played=played,
        ranked_games_won=won,
    )


def completed_placement(before: Standing, after: Standing) -> bool:
    return after.placement_done and not before.placement_done


def settlement(final_rating: float, match: PlacementMatch) -> float:
    """What one placement game adds to its placed opponent's rating."""
    outcome = 1 if match.opponent_won else 0
    return adjusted_rating(match.opponent_rating, final_rating, outcome, PLACED_K) - match.opponent_rating


def settle_placement(
    final_rating: float, matches: Sequence[PlacementMatch], ratings: dict[str, float]
) -> dict[str, float]:
    """The opponents' ratings once a newcomer placed at ``final_rating``.

    ``ratings`` holds each opponent's current rating; the result holds the new
    ones.  The games are settled in order, each adding its share, so that
    every backend gets the same floating point sums.
    """
    settled = dict(ratings)
    for match in matches:
        settled[match.opponent_user_id] = (
            settled[match.opponent_user_id] + settlement(final_rating, match)
        )
    return settled


class RatingBook:
    """Every player's standing, kept in memory by replaying rated games in order.

    A reference model of the stored ratings: storage applies the same rules
    with SQL, and a test compares the two.
    """

    def __init__(self) -> None:
        self.standings: dict[str, Standing] = {}
        self.placement_matches: dict[str, list[PlacementMatch]] = {}

    def standing(self, user_id: str) -> Standing:
        return self.standings.get(user_id, Standing())

    def record(self, first_id: str, second_id: str, winner: int) -> None:
        """Apply a rated game between two distinct players."""
        if first_id == second_id:
            raise ValueError("a player cannot play a rated game against themselves")
        before = (self.standing(first_id), self.standing(second_id))
        after = rate_game(before[0], before[1], winner)
        ids = (first_id, second_id)
        for index in (0, 1):
            opponent = 1 - index
            if not before[index].placement_done and before[opponent].placement_done:
                self.placement_matches.setdefault(ids[index], []).append(
                    PlacementMatch(ids[opponent], before[opponent].rating, winner == opponent + 1)
                )
        self.standings[first_id], self.standings[second_id] = after
        for index in (0, 1):
            if completed_placement(before[index], after[index]):
                matches = self.placement_matches.pop(ids[index], [])
                current = {m.opponent_user_id: self.standing(m.opponent_user_id).rating for m in matches}
                for user_id, rating in settle_placement(after[index].rating, matches, current).items():
                    self.standings[user_id] = attrs.evolve(self.standing(user_id), rating=rating)


# -- approval --------------------------------------------------------------------


@attrs.frozen
class RankedProfile:
    """What ranked approval needs to know about one player of a room."""

    name: str
    logged_in: bool
    user_id: str | None
    wants_ranked: bool
    level: object  # as the client sent it; anything but an int in range is refused
    standing: Standing | None  # None: not known to storage


@attrs.frozen
class Approval:
    approved: bool
    reasons: tuple[str, ...] = ()  # why not, when not approved
    caveats: tuple[str, ...] = ()  # notes, when approved

    def message(self) -> dict:
        """The 2022 client's ``ranked_match_approved`` / ``ranked_match_denied`` message."""
        if self.approved:
            message: dict = {"ranked_match_approved": True}
            if self.caveats:
                message["caveats"] = list(self.caveats)
            return message
        return {"ranked_match_denied": True, "reasons": list(self.reasons)}


def approve_ranked(
    first: RankedProfile, second: RankedProfile, rule: PlacementRule = PlacementRule.CLASSIC
) -> Approval:
    """Whether a game between ``first`` (player 1) and ``second`` may be ranked.

    The reasons come in the 2022 server's order and words.
    """
    players = (first, second)
    placed = [p.standing is not None and p.standing.placement_done for p in players]
    reasons: list[str] = []
    if rule is PlacementRule.CLASSIC and not any(placed):
        reasons.append(NEITHER_PLACED)
    if first.user_id is not None and first.user_id == second.user_id:
        reasons.append(SAME_ACCOUNT)
    ratings = [
        p.standing.current_rating if p.standing is not None else DEFAULT_RATING for p in players
    ]
    if abs(ratings[0] - ratings[1]) > ALLOWABLE_RATING_SPREAD:
        reasons.append(TOO_FAR_APART)
    if not all(_ranked_level(p.level) for p in players):
        reasons.append(LEVEL_OUT_OF_RANGE)
    if first.level != second.level:
        reasons.append(LEVELS_DIFFER)
    for player in players:
        if not player.logged_in or player.user_id is None or player.standing is None:
            reasons.append(didnt_log_in(player.name))
        if not player.wants_ranked:
            reasons.append(doesnt_want_ranked(player.name))
    if reasons:
        return Approval(False, reasons=tuple(reasons))
    if any(placed) and not all(placed):
        return Approval(True, caveats=(NEWCOMER_CAVEAT,))
    return Approval(True)


def _ranked_level(level: object) -> bool:
    return (
        isinstance(level, int) and not isinstance(level, bool)
        and MIN_LEVEL_FOR_RANKED <= level <= MAX_LEVEL_FOR_RANKED
    )


# -- what the client is shown ----------------------------------------------------


def rating_entry(now: Standing | None, before: Standing | None = None) -> dict:
    """One player's entry of the ``ratings`` list in create_room, character_select
    and spectate_request_granted.

    ``now`` is None for a player who is not logged in.  ``before`` is the
    standing before the room's last game (None: no game yet, no difference).
    """
    if now is None:
        return {"old": 0, "new": 0, "difference": 0, "league": league(0)}
    if not now.placement_done:
        # The client shows the progress text only next to a "new" of 0.
        return {
            "old": 0, "new": 0, "difference": 0, "league": league(0),
            "placement_match_progress": placement_progress(now.placement_games_played),
        }
    new = round_rating(now.rating)
    if before is None:
        old = new
    elif before.placement_done:
        old = round_rating(before.rating)
    else:
        old = 0  # just placed: the whole rating is new
    return {"old": old, "new": new, "difference": new - old, "league": league(new)}


def public_player_data(standing: Standing | None) -> dict | None:
    """A player's value in the lobby's ``players`` map, or None to leave them out.

    Placed players show their rating; players in placement only their count
    of ranked games (the client shows a rating only when there is one).
    """
    if standing is None or (not standing.placement_done and standing.ranked_games_played == 0):
        return None
    if not standing.placement_done:
        return {"ranked_games_played": standing.ranked_games_played}
    return {
        "rating": round_rating(standing.rating),
        "ranked_games_played": standing.ranked_games_played,
    }


def lobby_players(players: Iterable[tuple[str, Standing | None]]) -> dict[str, dict]:
    """The lobby's ``players`` map from (name, standing) pairs."""
    result = {}
    for name, standing in players:
        data = public_player_data(standing)
        if data is not None:
            result[name] = data
    return result


@attrs.frozen
class LeaderboardEntry:
    rank: int  # 1 is the best
    user_id: str
    name: str
    rating: float
    ranked_games_played: int
    ranked_games_won: int


def leaderboard_report(entries: Iterable[LeaderboardEntry], asker_user_id: str | None) -> dict:
    """The ``leaderboard_report`` message.  The client numbers the rows itself, so
    ``entries`` must be the best players from rank 1, without gaps."""
    rows = []
    for entry in entries:
        row: dict = {"user_name": entry.name, "rating": round_rating(entry.rating)}
        if asker_user_id is not None and entry.user_id == asker_user_id:
            row["is_you"] = True
        rows.append(row)
    return {"leaderboard_report": rows}
