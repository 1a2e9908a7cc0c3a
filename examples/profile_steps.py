"""Where the time of a decode step goes, for one recipe at a few context lengths.

    PYTHONPATH=. python examples/profile_steps.py [recipe] [backend]

Writes profile_steps.png (stacked shares of the four steps and the rest of the model) in the
current directory.  For the full sweep use `jax-hetero profile --out docs/profile_cpu`.
"""
import sys

from jax_hetero.profile import profile_decode, stacked_bars, table

recipe = sys.argv[1] if len(sys.argv) > 1 else "quest"
backend = sys.argv[2] if len(sys.argv) > 2 else "auto"
profiles = []
for context in (4096, 16384):
    print(f"profiling {recipe} at {context} tokens on {backend} ...", flush=True)
    profiles.append(profile_decode(recipe, context, backend=backend, reps=5))
print(table(profiles))
print("wrote", stacked_bars(profiles, "profile_steps.png"))
