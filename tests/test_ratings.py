"""The 2022 rating rules.  Expected numbers are worked out independently with
``decimal`` at 40 digits from the 2022 formulas, not with the module under test."""

from decimal import Decimal, getcontext

import attrs
import pytest

from netplay.accounts import ratings
from netplay.accounts.ratings import (
    Approval,
    LeaderboardEntry,
    PlacementMatch,
    PlacementRule,
    RankedProfile,
    RatingBook,
    Standing,
)

getcontext().prec = 40


def decimal_expected(rating, opponent):
    return 1 / (1 + Decimal(10) ** ((Decimal(opponent) - Decimal(rating)) / 400))


def decimal_adjusted(rating, opponent, outcome, k):
    return Decimal(rating) + k * (outcome - decimal_expected(rating, opponent))


PLACED_1500 = Standing(rating=1500, placement_done=True, ranked_games_played=40)


def test_constants_are_the_2022_ones():
    assert ratings.DEFAULT_RATING == 1500
    assert ratings.ALLOWABLE_RATING_SPREAD == pytest.approx(360)
    assert ratings.PLACEMENT_MATCH_COUNT_REQUIREMENT == 30
    assert (ratings.PLACEMENT_MATCH_K, ratings.PLACED_K) == (50, 10)


@pytest.mark.parametrize(
    "rating, expected",
    [(None, "Newcomer"), (-1000, "Newcomer"), (0, "Newcomer"), (0.99, "Newcomer"), (1, "Copper"),
     (1124, "Copper"), (1125, "Bronze"), (1500, "Gold"), (1575, "Platinum"), (1874, "Diamond"),
     (1875, "Master"), (2025, "Grandmaster"), (9000, "Grandmaster")],
)
def test_league_is_the_highest_whose_minimum_is_reached(rating, expected):
    assert ratings.league(rating) == expected


@pytest.mark.parametrize(
    "value, expected", [(1500.5, 1501), (1500.49, 1500), (2.5, 3), (-2.5, -3), (-2.4, -2), (0, 0)]
)
def test_display_rounding_is_half_away_from_zero(value, expected):
    assert ratings.round_rating(value) == expected


@pytest.mark.parametrize(
    "rating, opponent, outcome, k",
    [(1600, 1400, 1, 10), (1600, 1400, 0, 10), (1500, 1900, 1, 10), (1525, 1500, 0, 50)],
)
def test_elo_adjustment_matches_the_2022_formula(rating, opponent, outcome, k):
    expected = decimal_adjusted(rating, opponent, outcome, k)
    assert ratings.adjusted_rating(rating, opponent, outcome, k) == pytest.approx(float(expected), abs=1e-9)


def test_known_values():
    assert ratings.adjusted_rating(1500, 1500, 1, 10) == 1505
    assert ratings.adjusted_rating(1500, 1500, 1, 50) == 1525
    assert ratings.adjusted_rating(1600, 1400, 1, 10) == pytest.approx(1602.4025307335204)
    assert ratings.adjusted_rating(1500, 1900, 1, 10) == pytest.approx(1509.0909090909091)


def test_placed_players_play_elo_with_k_10_and_count_games_and_wins():
    first = Standing(rating=1600, placement_done=True, ranked_games_played=50, ranked_games_won=20)
    second = Standing(rating=1400, placement_done=True, ranked_games_played=31, ranked_games_won=3)
    after = ratings.rate_game(first, second, winner=2)
    assert after[0].rating == pytest.approx(float(decimal_adjusted(1600, 1400, 0, 10)), abs=1e-9)
    assert after[1].rating == pytest.approx(float(decimal_adjusted(1400, 1600, 1, 10)), abs=1e-9)
    assert (after[0].ranked_games_played, after[0].ranked_games_won) == (51, 20)
    assert (after[1].ranked_games_played, after[1].ranked_games_won) == (32, 4)


def test_a_draw_is_not_rated():
    with pytest.raises(ValueError):
        ratings.rate_game(Standing(), PLACED_1500, 0)


def test_a_newcomer_moves_only_the_provisional_rating_against_a_placed_player():
    newcomer, placed = ratings.rate_game(Standing(), PLACED_1500, winner=1)
    assert newcomer.placement_rating == 1525
    assert newcomer.rating == ratings.DEFAULT_RATING and not newcomer.placement_done
    assert (newcomer.ranked_games_played, newcomer.ranked_games_won) == (1, 1)
    # The placed player's rating waits for the newcomer's placement; the game counts now.
    assert placed.rating == 1500
    assert (placed.ranked_games_played, placed.ranked_games_won) == (41, 0)


def test_thirty_wins_complete_placement_and_settle_the_placed_opponent():
    book = RatingBook()
    book.standings["placed"] = PLACED_1500
    expected = Decimal(1500)
    for game in range(30):
        book.record("new", "placed", winner=1)
        expected = decimal_adjusted(expected, 1500, 1, 50)
        if game < 29:
            assert not book.standing("new").placement_done
            assert book.standing("placed").rating == 1500
    newcomer = book.standing("new")
    assert newcomer.placement_done
    assert newcomer.rating == newcomer.placement_rating
    assert newcomer.rating == pytest.approx(float(expected), abs=1e-9)
    assert (newcomer.ranked_games_played, newcomer.ranked_games_won) == (30, 30)
    # Thirty losses, each settled against the final rating, from 1500.
    settled = 1500 + 30 * (decimal_adjusted(1500, expected, 0, 10) - 1500)
    assert book.standing("placed").rating == pytest.approx(float(settled), abs=1e-9)
    assert book.standing("placed").ranked_games_played == 70
    assert book.placement_matches == {}


def test_settlement_uses_the_opponent_rating_at_the_time_of_the_game():
    match = PlacementMatch("x", opponent_rating=1600, opponent_won=True)
    expected = decimal_adjusted(1600, 1400, 1, 10) - 1600
    assert ratings.settlement(1400, match) == pytest.approx(float(expected), abs=1e-12)
    assert ratings.settle_placement(1400, [match, match], {"x": 1000}) == {
        "x": pytest.approx(1000 + 2 * float(expected))
    }


def test_two_newcomers_rate_each_other_against_provisional_ratings():
    first = Standing(placement_rating=1600, ranked_games_played=3)
    second = Standing(placement_rating=1400, ranked_games_played=29)
    after = ratings.rate_game(first, second, winner=1)
    assert after[0].placement_rating == pytest.approx(float(decimal_adjusted(1600, 1400, 1, 50)))
    assert after[1].placement_rating == pytest.approx(float(decimal_adjusted(1400, 1600, 0, 50)))
    assert not after[0].placement_done
    assert after[1].placement_done and after[1].rating == after[1].placement_rating


def profile(name, user_id, standing=Standing(), *, level=5, wants=True, logged_in=True):
    return RankedProfile(name, logged_in, user_id, wants, level, standing)


def test_classic_rule_refuses_two_players_in_placement_with_the_2022_text():
    approval = ratings.approve_ranked(profile("a", "1"), profile("b", "2"))
    assert approval == Approval(False, reasons=(ratings.NEITHER_PLACED,))
    assert approval.message() == {
        "ranked_match_denied": True,
        "reasons": ["Neither player has finished enough placement matches against already ranked players"],
    }


def test_relaxed_rule_lets_two_players_in_placement_play_ranked():
    approval = ratings.approve_ranked(profile("a", "1"), profile("b", "2"), PlacementRule.RELAXED)
    assert approval == Approval(True)
    assert approval.message() == {"ranked_match_approved": True}


def test_a_newcomer_against_a_placed_player_is_approved_with_the_caveat():
    approval = ratings.approve_ranked(profile("a", "1"), profile("b", "2", PLACED_1500))
    assert approval.message() == {
        "ranked_match_approved": True,
        "caveats": ["Note: Rating adjustments for these matches will be processed when the newcomer"
                    " finishes placement."],
    }


def test_every_reason_in_the_2022_order():
    far = Standing(rating=1861, placement_done=True)
    approval = ratings.approve_ranked(
        profile("alice", "7", level=11, wants=False, logged_in=False, standing=None),
        profile("bob", "7", far, level=3),
    )
    assert approval.reasons == (
        "Players cannot use the same account",
        "Players' ratings are too far apart",
        "Only levels between 1 and 10 are allowed for ranked play.",
        "Levels don't match",
        "alice didn't log in",
        "alice doesn't want ranked",
    )


def test_ratings_exactly_360_apart_are_allowed_and_placement_rating_counts():
    newcomer = Standing(placement_rating=1140, ranked_games_played=4)
    assert ratings.approve_ranked(profile("a", "1", newcomer), profile("b", "2", PLACED_1500)).approved
    newcomer = attrs.evolve(newcomer, placement_rating=1139.9)
    assert not ratings.approve_ranked(profile("a", "1", newcomer), profile("b", "2", PLACED_1500)).approved


def test_two_anonymous_players_are_not_the_same_account():
    approval = ratings.approve_ranked(profile("a", None, None), profile("b", None, None))
    assert ratings.SAME_ACCOUNT not in approval.reasons
    assert "a didn't log in" in approval.reasons and "b didn't log in" in approval.reasons


def test_rating_entries_as_the_client_shows_them():
    assert ratings.rating_entry(None) == {"old": 0, "new": 0, "difference": 0, "league": "Newcomer"}
    assert ratings.rating_entry(Standing()) == {
        "old": 0, "new": 0, "difference": 0, "league": "Newcomer",
        "placement_match_progress": "0/30 placement matches played.",
    }
    before = Standing(rating=1600.4, placement_done=True)
    after = attrs.evolve(before, rating=1592.6)
    assert ratings.rating_entry(before) == {"old": 1600, "new": 1600, "difference": 0, "league": "Platinum"}
    assert ratings.rating_entry(after, before) == {
        "old": 1600, "new": 1593, "difference": -7, "league": "Platinum"
    }
    just_placed = Standing(rating=1712.5, placement_done=True, ranked_games_played=30)
    assert ratings.rating_entry(just_placed, Standing(ranked_games_played=29)) == {
        "old": 0, "new": 1713, "difference": 1713, "league": "Platinum"
    }


def test_lobby_players_map():
    assert ratings.lobby_players(
        [("a", None), ("b", Standing()), ("c", Standing(ranked_games_played=2)),
         ("d", Standing(rating=1777.5, placement_done=True, ranked_games_played=44))]
    ) == {"c": {"ranked_games_played": 2}, "d": {"rating": 1778, "ranked_games_played": 44}}


def test_leaderboard_report_marks_the_asker():
    entries = [LeaderboardEntry(1, "9", "zed", 1900.5, 50, 40), LeaderboardEntry(2, "4", "amy", 1500, 30, 15)]
    assert ratings.leaderboard_report(entries, "4") == {"leaderboard_report": [
        {"user_name": "zed", "rating": 1901}, {"user_name": "amy", "rating": 1500, "is_you": True}
    ]}
    assert ratings.leaderboard_report([], None) == {"leaderboard_report": []}
