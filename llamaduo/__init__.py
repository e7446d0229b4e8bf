"""LlamaDuo: migrate a task from a service LLM to a small local model.

The library holds the logic and explicit I/O; it never imports Prefect
(`tasks/` and `flows/` wrap it for orchestration).
"""

__version__ = "0.1.0"
# Bumped whenever a stage's output for the same inputs changes: part of every cache key.
CODE_VERSION = "6"  # 6: judgement counts per item, match_key curation, baseline answers only when given
