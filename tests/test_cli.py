"""The command line: argument parsing, the command table, and a tiny demo run."""
import argparse

import pytest

from jax_hetero.__main__ import COMMANDS, build_parser, main, parse_tokens, register_command


def test_token_counts():
    assert parse_tokens("8K") == 8192 and parse_tokens("128k") == 131072 and parse_tokens("1000") == 1000
    with pytest.raises(argparse.ArgumentTypeError, match="not a token count"):
        parse_tokens("lots")


def test_commands_and_extension():
    assert {"demo", "profile", "quality"} <= set(COMMANDS)
    seen = []
    register_command("echo-test", "test only", lambda p: p.add_argument("--word"), lambda a: seen.append(a.word))
    try:
        assert main(["echo-test", "--word", "hi"]) == 0 and seen == ["hi"]
    finally:
        del COMMANDS["echo-test"]


def test_unknown_recipe_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["profile", "--recipes", "quest,flash"])
    assert "unknown recipe 'flash'; valid choices: dense, seer, quest, dsa" in capsys.readouterr().err


def test_tiny_demo_agrees_with_dense_at_full_budget(capsys):
    from jax_hetero.profile.demo import run_demo
    result = run_demo(context=192, steps=3, budget=64, profile_context=512)
    out = capsys.readouterr().out
    assert "agreement with dense attention" in out and "| quest | 512 |" in out and "rag (BM25" in out
    assert "hmt (compressed memory): 4 segments of 48 tokens" in out
    for recipe in ("seer", "quest", "dsa"):
        assert result["agreement"][recipe]["full_budget_max_diff"] < 1e-3
    shares = {p["recipe"]: p["memory_share"] for p in result["profiles"]}
    assert set(shares) == {"dense", "seer", "quest", "dsa"} and all(0 <= s <= 1 for s in shares.values())
