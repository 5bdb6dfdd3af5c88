"""The committed Pong policy (pretrained/pong-ppo) still wins a whole game: a guard on the Atari pipeline
(42-pixel frames, 4-frame skip with max-pooling, 4 frames stacked, the network rebuilt from config.json)
that a change to any of them would break. Measured with the committed policy (epoch 3197 of the Pong42
run): 10 of 10 games won, scores 17 to 21, mean 20.3 (test_policy -n 10, sampled actions, first reset
seeded 0)."""

from __future__ import annotations

import re

from tests.conftest import REPO


def test_the_pretrained_pong_policy_wins_a_whole_game(cli):
    proc = cli("test_policy", str(REPO / "pretrained" / "pong-ppo"), "-n", "1")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    score = float(re.search(r"EpRet (-?[\d.]+)", out)[1])
    assert score > 0, out  # a game ends at 21 points: a positive score is the policy's 21 first
