"""The decode-step profiler: step times net of the per-call dispatch, totals, JSON round trip."""
import json

from jax_hetero.nn import DecoderConfig
from jax_hetero.pipeline import STEPS
from jax_hetero.profile import document, from_json, profile_decode, to_json

TINY = DecoderConfig(hidden_dim=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=128,
                     max_len=512)


def test_profile_decode_takes_the_dispatch_off_each_step():
    p = profile_decode("quest", 256, options=dict(page_size=16, budget=64), config=TINY, reps=2)
    assert p.dispatch_ms > 0.0
    assert set(p.steps_ms) == set(STEPS) and all(t >= 0.0 for t in p.steps_ms.values())
    assert abs(p.total_ms - (sum(p.steps_ms.values()) + p.rest_ms)) < 1e-9
    assert "less the time of an empty jitted call" in document([p], "cmd", "x.png")
    again = from_json(to_json([p]))[0]
    assert again == p


def test_profiles_recorded_before_the_correction_still_load():
    p = profile_decode("dense", 128, config=TINY, reps=1)
    old = {k: v for k, v in json.loads(to_json([p]))[0].items() if k != "dispatch_ms"}
    loaded = from_json(json.dumps([old]))[0]
    assert loaded.dispatch_ms == 0.0
    assert "includes one dispatch" in document([loaded], "cmd", "x.png")
