"""KV-cache state and the policies that decide what each chunk attends to, and where."""

from .base import CacheGeometry, CachePolicy, ChunkPlan, KVCache, Slot
from .registry import POLICIES, PRESETS, make_policy, parse_options, policy_names

__all__ = [
    "CacheGeometry", "CachePolicy", "ChunkPlan", "KVCache", "Slot",
    "POLICIES", "PRESETS", "make_policy", "parse_options", "policy_names",
]
