"""KV-cache state and the policies that decide what each chunk attends to, and where."""

from .base import KVCache
from .plan import CacheGeometry, ChunkPlan, Slot
from .policy import CachePolicy
from .registry import POLICIES, PRESETS, make_policy, parse_options, policy_names
from .ring import RingKVCache, make_cache

__all__ = [
    "CacheGeometry", "CachePolicy", "ChunkPlan", "KVCache", "RingKVCache", "Slot", "make_cache",
    "POLICIES", "PRESETS", "make_policy", "parse_options", "policy_names",
]
