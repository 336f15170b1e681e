"""A synthetic card-fraud data set with an entity id, time-varying card features and labels.

Card features change daily (so point-in-time joins matter); a transaction's fraud probability
depends on its amount and on the card's features as of the transaction time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CARD_FEATURES = ("avg_amount_30d", "txn_count_7d", "chargeback_rate", "account_age_days")
MODEL_FEATURES = ("log_amount", *CARD_FEATURES)
DAY_NS = 86_400 * 10**9


@dataclass
class FraudData:
    card_snapshots: dict[str, np.ndarray]
    """card, event_timestamp (int64 ns), and one column per CARD_FEATURES: daily snapshots."""
    transactions: dict[str, np.ndarray]
    """card, event_timestamp, amount, label."""


def generate(
    cards: int = 2000, transactions: int = 20000, days: int = 20, seed: int = 0
) -> FraudData:
    rng = np.random.default_rng(seed)
    start = np.datetime64("2026-01-01", "ns").astype(np.int64)
    base_amount = rng.lognormal(3.5, 0.6, cards)
    base_count = rng.poisson(12, cards).astype(np.float64)
    risky = rng.random(cards) < 0.08
    age = rng.uniform(30, 3000, cards)
    snap_card = np.repeat(np.arange(cards, dtype=np.int64), days)
    snap_day = np.tile(np.arange(days), cards)
    drift = rng.normal(1.0, 0.1, cards * days)
    card_snapshots = {
        "card": snap_card,
        "event_timestamp": start + snap_day * DAY_NS,
        "avg_amount_30d": (base_amount[snap_card] * drift).astype(np.float32),
        "txn_count_7d": np.maximum(base_count[snap_card] * drift, 0).astype(np.float32),
        "chargeback_rate": np.where(
            risky[snap_card],
            rng.uniform(0.05, 0.3, cards * days),
            rng.uniform(0, 0.02, cards * days),
        ).astype(np.float32),
        "account_age_days": (age[snap_card] + snap_day).astype(np.float32),
    }
    t_card = rng.integers(0, cards, transactions)
    # Transactions start on day 1 so every card has a snapshot at or before them.
    t_time = start + DAY_NS + (rng.random(transactions) * (days - 1) * DAY_NS).astype(np.int64)
    amount = base_amount[t_card] * rng.lognormal(0.0, 0.8, transactions)
    unusual = np.log(amount / base_amount[t_card])
    logit = (
        -4.0
        + 1.6 * unusual
        + 3.0 * risky[t_card]
        - 0.0006 * age[t_card]
        + rng.normal(0, 0.5, transactions)
    )
    label = (rng.random(transactions) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    order = np.argsort(t_time, kind="stable")
    return FraudData(
        card_snapshots,
        {
            "card": t_card[order].astype(np.int64),
            "event_timestamp": t_time[order],
            "amount": amount[order].astype(np.float32),
            "label": label[order],
        },
    )


def model_inputs(amount: np.ndarray, card_features: np.ndarray) -> np.ndarray:
    """The model's input rows: log amount, then the card features in CARD_FEATURES order."""
    return np.column_stack([np.log1p(amount.astype(np.float32)), card_features]).astype(np.float32)


def shifted(rows: int = 2000, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Model input rows and labels after the world moved on: card averages and amounts are
    higher, and fraud has become card testing — small amounts on young accounts — which the
    first model, trained to flag unusually large amounts, ranks backwards."""
    rng = np.random.default_rng(seed)
    base_amount = rng.lognormal(3.5, 0.6, rows) * 1.6
    count = rng.poisson(12, rows).astype(np.float64)
    age = rng.uniform(30, 3000, rows)
    chargeback = rng.uniform(0, 0.05, rows)
    amount = base_amount * rng.lognormal(0.0, 0.8, rows)
    unusual = np.log(amount / base_amount)
    logit = -3.0 - 1.8 * unusual + 3.0 * (age < 500) + rng.normal(0, 0.5, rows)
    label = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    card_x = np.column_stack(
        [base_amount * rng.normal(1.0, 0.1, rows), count, chargeback, age]
    ).astype(np.float32)
    return model_inputs(amount.astype(np.float32), card_x), label
