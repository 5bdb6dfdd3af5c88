"""Atari games through ale-py (envs.atari): names, the preprocessing, the real score beside the clipped
training rewards, episodic life, exact snapshots of running games, and training, resume and replay end to
end. Real ALE games throughout (ale-py ships the ROMs)."""

from __future__ import annotations

import json
import sys

import gymnasium as gym
import numpy as np
import pytest

from spinppo.envs.atari import ClipReward, EpisodicLife, GameScore, StickyActions
from spinppo.envs.registry import EnvChoice, EnvFactory, make_vector_env, resolve_env, saved_env_spec
from spinppo.envs.state import get_env_state, get_vector_env_state, set_env_state, set_vector_env_state
from spinppo.utils.errors import UserError
from tests.conftest import MPIRUN, mpirun_commands, rows_without_timing, run


def wrapper(env: gym.Env, kind: type) -> gym.Env:
    """The wrapper of type ``kind`` in ``env``'s chain."""
    while not isinstance(env, kind):
        env = env.env
    return env


def record_real_rewards(env: gym.Env) -> list[float]:
    """A list that receives every reward the game gives (unclipped, every agent step, the no-op steps
    EpisodicLife takes included), read below GameScore: independent of its sums."""
    stack = wrapper(env, GameScore).env
    seen: list[float] = []
    step = stack.step

    def recording_step(action):
        out = step(action)
        seen.append(float(out[1]))
        return out

    stack.step = recording_step  # an instance attribute: GameScore's self.env.step finds it first
    return seen


# ------------------------------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "name, target",
    [
        ("Pong", "ALE/Pong-v5"),
        ("breakout", "ALE/Breakout-v5"),
        ("SpaceInvaders", "ALE/SpaceInvaders-v5"),
        ("ALE/Breakout-v5", "ALE/Breakout-v5"),
        ("BreakoutNoFrameskip-v4", "BreakoutNoFrameskip-v4"),  # CleanRL's id: no sticky actions
    ],
)
def test_atari_names_resolve_to_the_atari_kind(name, target):
    assert resolve_env(name) == EnvChoice("atari", target)


def test_other_names_stay_gymnasium_and_typos_suggest_games():
    assert resolve_env("CartPole") == EnvChoice("gym", "CartPole-v1")
    with pytest.raises(UserError, match=r"unknown environment 'Breakot'; did you mean Breakout\b"):
        resolve_env("Breakot")
    with pytest.raises(UserError, match=r"did you mean ALE/Breakout-v5"):
        resolve_env("ALE/Breakot-v5")


def test_config_json_entry_round_trips_and_edits_are_caught():
    factory = EnvFactory("Breakout")
    spec = factory.to_json()
    assert spec == {"name": "Breakout", "kind": "atari", "env": "ALE/Breakout-v5", "env_kwargs": {}}
    assert saved_env_spec({"env_fn": spec}, "config.json")["kind"] == "atari"
    with pytest.raises(UserError, match="not an ale-py game"):
        saved_env_spec({"env_fn": {**spec, "env": "CartPole-v1"}}, "config.json")


def test_bad_env_kwargs_are_user_errors():
    with pytest.raises(UserError, match="frameskip"):
        EnvFactory("Pong", {"frameskip": 4})()
    with pytest.raises(UserError, match="repeat_action_probability"):
        EnvFactory("Pong", {"repeat_action_probability": 2})()
    with pytest.raises(UserError, match="fix --env_kwargs"):
        EnvFactory("Pong", {"no_such_keyword": 1})()


def test_sticky_actions_are_the_ids_own_and_drawn_outside_ale():
    v5 = EnvFactory("Pong")()
    assert wrapper(v5, StickyActions).p == 0.25  # ALE/<Game>-v5: Machado et al.'s protocol
    assert v5.unwrapped.ale.getFloat("repeat_action_probability") == 0.0  # ours, restorable, not ALE's
    assert wrapper(EnvFactory("PongNoFrameskip-v4")(), StickyActions).p == 0.0
    off = EnvFactory("Pong", {"repeat_action_probability": 0.0})()
    assert wrapper(off, StickyActions).p == 0.0


def test_steps_straight_to_the_emulator_give_what_ale_pys_own_step_gives():
    """StickyActions skips AtariEnv.step (its full-colour screen copy at every frame) on gym.make's plain
    stack: frames, rewards, ends and infos must stay those of the step through AtariEnv, sticky actions,
    lost lives and game ends included."""
    fast, slow = EnvFactory("Breakout")(), EnvFactory("Breakout")()
    assert wrapper(fast, StickyActions)._direct is fast.unwrapped
    wrapper(slow, StickyActions)._direct = None  # through env.step, as any other stack goes
    actions = np.random.default_rng(0).integers(0, fast.action_space.n, 3000)
    obs_fast, _ = fast.reset(seed=5)
    obs_slow, _ = slow.reset(seed=5)
    np.testing.assert_array_equal(obs_fast, obs_slow)
    ends = 0
    for a in actions:
        out_fast, out_slow = fast.step(a), slow.step(a)
        np.testing.assert_array_equal(out_fast[0], out_slow[0])
        assert out_fast[1:] == out_slow[1:]
        if out_fast[2] or out_fast[3]:
            ends += 1
            np.testing.assert_array_equal(fast.reset()[0], slow.reset()[0])
    assert ends >= 5  # lost lives (EpisodicLife) and whole games were crossed


def test_a_time_limit_from_env_kwargs_is_honoured_through_env_step():
    env = EnvFactory("PongNoFrameskip-v4", {"max_episode_steps": 40})()  # gym.make adds a TimeLimit
    assert wrapper(env, StickyActions)._direct is None
    env.reset(seed=0)
    truncated = [env.step(0)[3] for _ in range(10)]
    assert any(truncated)  # 40 emulator frames, the reset's no-ops among them: at most 10 agent steps


# ------------------------------------------------------------------------------------------ preprocessing


def test_observations_are_four_stacked_84x84_grayscale_frames():
    for training in (True, False):
        env = EnvFactory("Pong")(training=training)
        assert env.observation_space == gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
        obs, _ = env.reset(seed=0)
        assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
        assert all(np.array_equal(obs[0], obs[k]) for k in range(4))  # the first frame repeated
        for _ in range(8):
            obs, *_ = env.step(env.action_space.sample())
        assert obs.shape == (4, 84, 84) and len({obs[k].tobytes() for k in range(4)}) > 1
        assert env.metadata["render_fps"] == 15
    training = EnvFactory("Pong")(training=True)
    assert isinstance(training, ClipReward) and isinstance(training.env, EpisodicLife)
    assert isinstance(EnvFactory("Pong")(training=False), GameScore)  # whole games, real rewards


def play(env: gym.Env, steps: int, seed: int, until_game_end: bool = False):
    """Random play: yields (reward, terminated, truncated, info) per step; resets after every end."""
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    for _ in range(steps):
        _, r, term, trunc, info = env.step(int(rng.integers(env.action_space.n)))
        yield r, term, trunc, info
        if term or trunc:
            if until_game_end and "game_return" in info:
                return
            env.reset()


def test_training_rewards_are_clipped_and_the_game_score_is_the_real_one():
    """SpaceInvaders pays 5 to 30 points an invader: the learner sees 1, the logged return the points."""
    env = EnvFactory("SpaceInvaders")(training=True)
    real = record_real_rewards(env)
    clipped, games = [], []
    for r, _, _, info in play(env, 3000, seed=1):
        clipped.append(r)
        if "game_return" in info:
            games.append((info["game_return"], info["game_length"], len(real)))
    assert set(clipped) <= {-1.0, 0.0, 1.0} and 1.0 in clipped
    assert max(real) >= 5.0
    assert games, "no game ended in 3000 steps"
    start = 0
    for game_return, game_length, end in games:  # each game: every step of it, life losses included
        assert game_length == end - start
        assert game_return == pytest.approx(sum(real[start:end])) and game_return >= 5.0
        start = end


def test_a_lost_life_ends_the_training_episode_but_not_the_game():
    env = EnvFactory("Breakout")(training=True)
    ends = []
    for _, term, trunc, info in play(env, 2000, seed=2, until_game_end=True):
        if term or trunc:
            ends.append((term, info["lives"], info["episode_frame_number"], "game_return" in info))
    # Breakout's five lives: four training episodes end at a lost life, the fifth with the game.
    assert [lives for _, lives, _, _ in ends] == [4, 3, 2, 1, 0]
    assert all(term for term, *_ in ends)
    assert [real for *_, real in ends] == [False] * 4 + [True]
    frames = [f for _, _, f, _ in ends]
    assert frames == sorted(frames) and frames[0] > 0  # one game: its frame count never restarts


def test_the_evaluation_variant_plays_whole_games_with_real_rewards():
    env = EnvFactory("SpaceInvaders")(training=False)
    rewards, ends = [], []
    for r, term, trunc, info in play(env, 3000, seed=3, until_game_end=True):
        rewards.append(r)
        if term or trunc:
            ends.append(info)
    assert len(ends) == 1 and ends[0]["lives"] == 0  # the first end is the game's
    assert ends[0]["game_return"] == pytest.approx(sum(rewards)) and ends[0]["game_length"] == len(rewards)
    assert max(rewards) > 1.0
    _, reset_info = env.reset()  # the reset that follows the end repeats the score (for SAME_STEP), once
    assert reset_info["game_return"] == ends[0]["game_return"]
    assert "game_return" not in env.reset()[1]


def test_the_vector_env_reports_game_scores_at_top_level():
    """SAME_STEP autoreset puts the step's own info under final_info; the reset's info (which repeats the
    finished game's score) is what the rollout reads, with the _game_return mask."""
    vec = make_vector_env(EnvFactory("Breakout"), 2, seed=0)
    assert vec.reports_game_score is True
    assert make_vector_env(EnvFactory("CartPole"), 2, seed=0).reports_game_score is False
    vec.reset(seed=0)
    vec.action_space.seed(0)
    games, lost_lives = [], 0
    for _ in range(1500):
        _, _, term, trunc, info = vec.step(vec.action_space.sample())
        lost_lives += int(np.sum(term))
        if "_game_return" in info and info["_game_return"].any():
            for i in np.flatnonzero(info["_game_return"]):
                assert term[i] or trunc[i]
                games.append((float(info["game_return"][i]), int(info["game_length"][i])))
    assert games and lost_lives >= 4 * len(games)
    assert all(length > 50 for _, length in games)


# -------------------------------------------------------------------------------------------- snapshots


def test_a_restored_game_continues_identically():
    """A snapshot mid-game (sticky actions on, past life losses and games) put into a fresh environment:
    the same observations, rewards, ends and scores for the next 1200 steps under the same actions."""
    factory = EnvFactory("Breakout")
    rng = np.random.default_rng(4)
    actions = rng.integers(4, size=1700)
    original = factory(training=True)
    original.reset(seed=4)
    for a in actions[:500]:  # numpy integers, as a VectorEnv sends them
        *_, term, trunc, _ = original.step(a)
        if term or trunc:
            original.reset()
    restored = factory(training=True)
    restored.reset(seed=99)  # another game entirely, until the snapshot replaces it
    set_env_state(restored, get_env_state(original))
    ends = 0
    for a in actions[500:]:
        oa, ra, ta, ua, ia = original.step(a)
        ob, rb, tb, ub, ib = restored.step(a)
        assert np.array_equal(oa, ob) and (ra, ta, ua) == (rb, tb, ub)
        assert ia.get("game_return") == ib.get("game_return") and ia["lives"] == ib["lives"]
        if ta or ua:
            ends += 1
            oa, ia = original.reset()
            ob, ib = restored.reset()
            assert np.array_equal(oa, ob) and ia.get("game_return") == ib.get("game_return")
    assert ends >= 5  # life losses and at least one new game passed through the comparison


def test_snapshots_keep_the_sticky_action_to_repeat():
    """At many points of a game, a restored copy repeats the action the original would repeat (ALE keeps
    it outside its saved state; StickyActions keeps it where envs.state saves it, a numpy integer too)."""
    factory = EnvFactory("Breakout")
    original, restored = factory(training=True), factory(training=True)
    original.reset(seed=6)
    actions = np.random.default_rng(6).integers(1, 4, size=(24, 40))  # no NOOPs: a repeat shows
    for chunk in actions:
        for a in chunk[:30]:
            *_, term, trunc, _ = original.step(a)
            if term or trunc:
                original.reset()
        restored.reset(seed=99)  # its own last action (NOOP) until the snapshot replaces it
        set_env_state(restored, get_env_state(original))
        assert wrapper(restored, StickyActions).last_action == wrapper(original, StickyActions).last_action
        for a in chunk[30:]:
            oa, ra, ta, ua, _ = original.step(a)
            ob, rb, tb, ub, _ = restored.step(a)
            assert np.array_equal(oa, ob) and (ra, ta, ua) == (rb, tb, ub)
            if ta or ua:
                original.reset()
                restored.reset()


def test_vector_env_snapshot_round_trips_through_pickle():
    factory = EnvFactory("Pong")
    a, b = make_vector_env(factory, 2, seed=0), make_vector_env(factory, 2, seed=0)
    a.reset(seed=0)
    b.reset(seed=7)
    a.action_space.seed(0)
    for _ in range(100):
        a.step(a.action_space.sample())
    set_vector_env_state(b, get_vector_env_state(a))
    acts = np.random.default_rng(0).integers(6, size=(300, 2))
    for act in acts:
        sa, sb = a.step(act), b.step(act)
        for x, y in zip(sa[:4], sb[:4]):
            np.testing.assert_array_equal(x, y)


# ------------------------------------------------------------------------------------------- end to end

PY = [sys.executable, "-m", "spinppo.run"]
FAST = ["--steps_per_epoch", "512", "--num_envs", "2", "--update_epochs", "1", "--minibatch_size", "256"]


def test_train_resume_and_replay_breakout(tmp_path, cli):
    """Two epochs on two ranks; a run stopped after its first epoch and resumed gives the same rows; the
    policy replays a whole game (the game's score) into a video."""
    # mpirun itself rather than --cpu 2 (a process less to start; --cpu: tests/test_cli.py), and the
    # whole and the partial run from one job (the ranks start once); the resume is a new job.
    job = ["ppo", "--env", "Breakout", *FAST, "--save_freq", "1", "--exp_name", "b"]
    whole_run = [*job, "--epochs", "2", "--data_dir", str(tmp_path / "whole")]
    mpirun_commands(2, [whole_run, [*job, "--epochs", "1", "--data_dir", str(tmp_path / "part")]])
    whole, part = tmp_path / "whole" / "b" / "b_s0", tmp_path / "part" / "b" / "b_s0"
    out = run([MPIRUN, "-np", "2", *PY, "ppo", "--resume", str(part), "--epochs", "2"], timeout=300).stdout
    assert "Resumed from the checkpoint of epoch" in out
    assert rows_without_timing(part) == rows_without_timing(whole)
    assert json.loads((whole / "config.json").read_text())["env_fn"]["kind"] == "atari"
    header, *rows = rows_without_timing(whole)
    logged = [(float(r[header.index("AverageEpRet")]), float(r[header.index("EpLen")])) for r in rows]
    games = [(ret, length) for ret, length in logged if not np.isnan(ret)]
    # Whole games of five lives (a life alone lasts about 30 steps of random play), scored in points.
    assert len(rows) == 2 and games and all(ret >= 0 and length > 100 for ret, length in games)

    video = tmp_path / "out.mp4"
    proc = cli("test_policy", str(whole), "--video", str(video), "-n", "1", "--len", "200")
    assert proc.returncode == 0, proc.stderr
    assert video.stat().st_size > 1000
    assert "Video saved to" in proc.stdout and "at 15 fps" in proc.stdout


def test_replayed_episodes_are_whole_games(tmp_path):
    """test_policy plays the evaluation variant: one episode is a whole game of five lives."""
    from spinppo.tools.test_policy import make_run_env

    env = make_run_env({"kind": "atari", "env": "ALE/Breakout-v5", "env_kwargs": {}})
    assert not isinstance(env, ClipReward)
    ends = [info for *_, term, trunc, info in play(env, 3000, seed=5, until_game_end=True) if term or trunc]
    assert len(ends) == 1 and ends[0]["lives"] == 0
