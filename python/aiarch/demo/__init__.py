"""`aiarch demo`: the whole product on embedded defaults, in one command.

Synthetic fraud data → features in Parquet, materialized to the native online store →
point-in-time training set → `aiarch train --nproc 2` (DDP on gloo) → registry (production) →
INT8 variant from `aiarch quantize` (staging) → `aiarch serve` with a 90/10 canary → a capacity
benchmark against it → drift report on a shifted batch. See `story.py`.
"""
