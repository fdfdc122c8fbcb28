import calendar
import json
import os

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from netplay.accounts.replays import (
    Decision,
    FinishedMatch,
    MatchPlayer,
    Publicity,
    ReplayFile,
    Skipped,
    SkipReason,
    build_replay,
    write_replay,
)
from netplay.framing.inputs import INPUT_ALPHABET, uncompress

ENDED = calendar.timegm((2024, 3, 9, 21, 5, 7))


def player(name, publicity=Publicity.WITH_MY_NAME, inputs="AAAAAgggQQ", level=8, user_id="1"):
    return MatchPlayer(name, user_id, level, "pa_characters_windy", "pdp_ta_common", inputs, publicity)


def match(first, second, **changes):
    value = FinishedMatch(
        players=(first, second), stage="pa_stages_fire", seed=4242, ranked=True, winner=2,
        decided_by=Decision.AGREEMENT, started_at=ENDED - 90, ended_at=ENDED,
    )
    return attrs.evolve(value, **changes)


def test_a_named_replay_in_the_2022_layout():
    replay = build_replay(match(player("zoe", level=8), player("adam", inputs="A" * 579 + "g" * 77, level=7),
                                win_counts=(0, 1)))
    assert replay.relative_path == (
        "v046/2024/03/09/adam-vs-zoe/v046-2024-03-09-21-05-07-zoe-L8-vs-adam-L7-Ranked-P2wins.txt"
    )
    assert json.loads(replay.content) == {"engineVersion": "046", "vs": {
        "P": "", "O": "", "Q": "", "R": "",
        "in_buf": "A5g3Q2", "I": "A579g77",
        "P1_level": 8, "P2_level": 7,
        "P1_char": "pa_characters_windy", "P2_char": "pa_characters_windy",
        "P1_name": "zoe", "P2_name": "adam", "ranked": True, "do_countdown": True, "seed": 4242,
        "P1_win_count": 0, "P2_win_count": 1,
    }}


def test_inputs_in_the_file_read_back_exactly_as_the_client_uncompresses_them():
    inputs = ("A" * 600 + "g" * 7 + "1111" + "Q" + "2" + "A" * 3) , "B" + "A" * 1000
    replay = build_replay(match(player("a", inputs=inputs[0]), player("b", inputs=inputs[1])))
    vs = json.loads(replay.content)["vs"]
    assert (uncompress(vs["in_buf"]), uncompress(vs["I"])) == inputs
    assert len(vs["I"]) < 10


@given(st.text(alphabet=INPUT_ALPHABET, max_size=60))
def test_any_written_inputs_read_back_exactly(inputs):
    replay = build_replay(match(player("a", inputs="A" + inputs), player("b")))
    if isinstance(replay, Skipped):
        assert replay.reason is SkipReason.UNREADABLE_INPUTS
    else:
        assert uncompress(json.loads(replay.content)["vs"]["in_buf"]) == "A" + inputs


def test_an_anonymous_name_is_nowhere_in_the_file_or_its_path():
    replay = build_replay(match(player("secretive", Publicity.ANONYMOUSLY), player("bob"), winner=0,
                                ranked=False))
    assert "secretive" not in replay.relative_path
    assert b"secretive" not in replay.content
    vs = json.loads(replay.content)["vs"]
    assert (vs["P1_name"], vs["P2_name"]) == ("anonymous", "bob")
    assert replay.relative_path.endswith("/bob-vs-anonymous/v046-2024-03-09-21-05-07-anonymous-L8-vs-bob-L8-Casual-draw.txt")


@pytest.mark.parametrize("which", [0, 1])
def test_not_at_all_from_either_player_means_no_file(which):
    players = [player("a"), player("b", Publicity.ANONYMOUSLY)]
    players[which] = attrs.evolve(players[which], publicity=Publicity.NOT_AT_ALL)
    assert build_replay(match(*players)) == Skipped(SkipReason.NOT_PUBLIC)


def test_unknown_publicity_from_a_client_is_the_most_private():
    assert Publicity.from_client("with my name") is Publicity.WITH_MY_NAME
    assert Publicity.from_client("anonymously") is Publicity.ANONYMOUSLY
    assert Publicity.from_client(None) is Publicity.NOT_AT_ALL
    assert Publicity.from_client("yes please") is Publicity.NOT_AT_ALL


def test_names_that_could_escape_the_folder_are_made_safe():
    replay = build_replay(match(player("../../etc"), player("b")))
    folder = replay.relative_path.split("/")
    assert ".." not in folder and len(folder) == 6


def test_write_replay_is_whole_and_never_replaces_a_file(tmp_path):
    replay = ReplayFile("v046/2024/03/09/a-vs-b/game.txt", b'{"vs": {}}')
    assert write_replay(tmp_path, replay) == "v046/2024/03/09/a-vs-b/game.txt"
    second = ReplayFile(replay.relative_path, b'{"vs": {"seed": 2}}')
    assert write_replay(tmp_path, second) == "v046/2024/03/09/a-vs-b/game-2.txt"
    folder = tmp_path / "v046/2024/03/09/a-vs-b"
    assert sorted(os.listdir(folder)) == ["game-2.txt", "game.txt"]  # no temporary left behind
    assert (folder / "game.txt").read_bytes() == b'{"vs": {}}'
    assert (folder / "game-2.txt").read_bytes() == b'{"vs": {"seed": 2}}'


# -- the 2023-2025 clients' version 2 replays ---------------------------------------------


def version2(winner_index=2):
    return {
        "timestamp": ENDED - 90, "engineVersion": "048", "replayVersion": 2, "seed": 4242,
        "gameMode": {"stackInteraction": 1}, "ranked": False, "stageId": "s",
        "completed": True, "winnerIndex": winner_index, "winnerId": 7,
        "players": [
            {"name": "zoe", "publicId": 3, "human": True, "wins": 0,
             "settings": {"level": 8, "inputs": "A3B1"}},
            {"name": "adam", "publicId": 7, "human": True, "wins": 1,
             "settings": {"level": 7, "inputs": "A4"}},
        ],
    }


def test_a_2025_replay_is_the_lobbys_json_named_as_panel_game_names_it():
    replay = build_replay(match(player("zoe"), player("adam"), replay=version2()))
    assert replay.relative_path == (
        "v048/2024/03/09/adam-vs-zoe/v048-2024-03-09-21-03-37-zoe-L8-adam-L7-VS-casual-P2wins.json"
    )
    assert json.loads(replay.content) == version2()


def test_an_anonymous_2025_player_loses_name_and_public_id_winner_included():
    replay = build_replay(match(
        player("zoe"), player("adam", Publicity.ANONYMOUSLY), replay=version2(),
    ))
    content = json.loads(replay.content)
    assert [p["name"] for p in content["players"]] == ["zoe", "anonymous"]
    assert [p["publicId"] for p in content["players"]] == [3, -2]
    assert content["winnerId"] == -2
    assert "adam" not in replay.relative_path and b"adam" not in replay.content


def test_a_2025_draw_and_a_refusal_to_publish():
    draw = version2(winner_index=None)
    del draw["winnerIndex"], draw["winnerId"]
    replay = build_replay(match(player("zoe"), player("adam"), replay=draw))
    assert replay.relative_path.endswith("-VS-casual-draw.json")
    private = match(player("zoe", Publicity.NOT_AT_ALL), player("adam"), replay=version2())
    assert build_replay(private) == Skipped(SkipReason.NOT_PUBLIC)


def test_write_replay_keeps_the_suffix_of_a_taken_json_name(tmp_path):
    replay = ReplayFile("v048/2024/03/09/a-vs-b/game.json", b"{}")
    assert write_replay(tmp_path, replay) == "v048/2024/03/09/a-vs-b/game.json"
    assert write_replay(tmp_path, replay) == "v048/2024/03/09/a-vs-b/game-2.json"


def test_an_incomplete_2025_game_is_named_without_a_result():
    aborted = version2()
    del aborted["winnerIndex"], aborted["winnerId"], aborted["completed"]
    aborted["incomplete"] = True
    replay = build_replay(match(player("zoe"), player("adam"), replay=aborted))
    assert replay.relative_path.endswith("-L7-VS-casual.json")
