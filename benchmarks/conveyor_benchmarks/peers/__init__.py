"""`conveyor bench peers`: the same pipeline on Conveyor, Ray Serve and PyTriton (the `peers` extra), in one run."""

from .peers_bench import SYSTEMS, Measurement, compare_answers, parse_levels, parse_systems, register, render_table, run
from .plan import OpStep, PeerPlan, peer_plan

__all__ = [
    "SYSTEMS",
    "Measurement",
    "OpStep",
    "PeerPlan",
    "compare_answers",
    "parse_levels",
    "parse_systems",
    "peer_plan",
    "register",
    "render_table",
    "run",
]
