"""Search never truncates silently: pages carry `next_page_token` / `truncated`, paging returns
every match exactly once in order, and a bad token is refused with a clear error."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aiarch.cli import main
from aiarch.errors import InvalidArgumentError
from aiarch.registry import ModelVersion, Registry, SearchPage

N_VERSIONS = 230  # more than the default page of 100, and several pages of every size below


@pytest.fixture
def populated(reg: Registry, tmp_path: Path) -> tuple[Registry, dict[tuple[str, int], int]]:
    """N_VERSIONS versions over 7 models with many tied and some missing sort values; returns
    the registry and each version's registration order (the order of its row id)."""
    rng = random.Random(11)
    art = tmp_path / "a.onnx"
    art.write_bytes(b"a")
    order: dict[tuple[str, int], int] = {}
    for i in range(N_VERSIONS):
        metrics = {"auc": round(rng.uniform(0.5, 1.0), 1)} if rng.random() < 0.8 else {}
        tags = {"grp": rng.choice("abc")} if rng.random() < 0.7 else {}
        tags["team"] = "risk" if i % 3 else "growth"
        mv = reg.register(f"model{i % 7}", art, metrics=metrics, tags=tags)
        order[(mv.name, mv.version)] = i
    for m in range(0, 7, 2):
        reg.set_model_tag(f"model{m}", "tier", str(m % 3))
    return reg, order


def _page_through(reg: Registry, size: int, **query: Any) -> list[SearchPage]:
    pages = [reg.search(limit=size, **query)]
    while pages[-1].next_page_token is not None:
        assert len(pages) <= N_VERSIONS, "paging does not end"
        pages.append(reg.search(limit=size, page_token=pages[-1].next_page_token, **query))
    return pages


def _nulls_last(value: Any, descending: bool) -> tuple[Any, ...]:
    if value is None:
        return (1, 0)
    if isinstance(value, float | int):
        return (0, -value if descending else value)
    return (0, value)


# (filter, order_by, Python sort key over (version, registration order), selection)
Key = Callable[[ModelVersion, int], Any]
CASES: list[tuple[str, str | None, Key]] = [
    ("", None, lambda v, i: -i),
    ("tags.team = 'risk'", None, lambda v, i: -i),  # answered on ids only
    ("", "metrics.auc desc", lambda v, i: (_nulls_last(v.metrics.get("auc"), True), -i)),
    (
        "tags.team = 'risk'",
        "tags.grp asc, metrics.auc asc",
        lambda v, i: (
            _nulls_last(v.tags.get("grp"), False),
            _nulls_last(v.metrics.get("auc"), False),
            -i,
        ),
    ),
    ("", "name asc, version desc", lambda v, i: (v.name, -v.version)),
    ("status = 'active'", "created_at asc", lambda v, i: (v.created_at, -i)),
]


# Every ordering at page sizes 17 and 100; page size 1 (one query per version) on three.
@pytest.mark.parametrize(
    ("case", "size"),
    [(c, s) for c in range(len(CASES)) for s in (17, 100)] + [(0, 1), (2, 1), (3, 1)],
)
def test_paging_returns_every_match_once_in_order(
    populated: tuple[Registry, dict[tuple[str, int], int]], case: int, size: int
) -> None:
    reg, registered = populated
    text, order_by, key = CASES[case]
    # The expected answer comes from a Python scan, not from the registry's SQL.
    everything = [v for name in sorted({n for n, _ in registered}) for v in reg.list_versions(name)]
    wanted = [v for v in everything if text != "tags.team = 'risk'" or v.tags["team"] == "risk"]
    expected = sorted(wanted, key=lambda v: key(v, registered[(v.name, v.version)]))
    pages = _page_through(reg, size, filter=text, order_by=order_by)
    got = [(v.name, v.version) for p in pages for v in p]
    assert got == [(v.name, v.version) for v in expected]
    assert all(p.truncated and len(p) == size for p in pages[:-1])
    assert not pages[-1].truncated and pages[-1].next_page_token is None
    assert 1 <= len(pages[-1]) <= size


def test_paging_with_model_tag_filter_and_order(
    populated: tuple[Registry, dict[tuple[str, int], int]],
) -> None:
    reg, registered = populated
    query = {"filter": "model.tags.tier != '9'", "order_by": "model.tags.tier desc, version asc"}
    got = [(v.name, v.version) for p in _page_through(reg, 9, **query) for v in p]
    tiers = {f"model{m}": str(m % 3) for m in range(0, 7, 2)}
    # tier desc, then the version number; among equal (tier, version) the newest row first.
    expected = sorted(
        (k for k in registered if k[0] in tiers),
        key=lambda k: (-int(tiers[k[0]]), k[1], -registered[k]),
    )
    assert got == expected


def test_default_limit_says_more_exist(
    populated: tuple[Registry, dict[tuple[str, int], int]],
) -> None:
    reg, _ = populated
    first = reg.search()
    assert len(first) == 100 and first.truncated and first.next_page_token
    assert first.to_dict()["truncated"] is True
    assert len(list(reg.search_all())) == N_VERSIONS
    assert len(list(reg.search_all(page_size=7))) == N_VERSIONS


def test_truncated_is_exact_at_the_page_boundary(reg: Registry, tmp_path: Path) -> None:
    art = tmp_path / "a.onnx"
    art.write_bytes(b"a")
    assert not reg.search().truncated  # empty registry
    for _ in range(5):
        reg.register("m", art)
    exactly = reg.search(limit=5)
    assert len(exactly) == 5 and not exactly.truncated and exactly.next_page_token is None
    one_short = reg.search(limit=4)
    assert len(one_short) == 4 and one_short.truncated
    rest = reg.search(limit=4, page_token=one_short.next_page_token)
    assert [v.version for v in rest] == [1] and not rest.truncated


def test_versions_added_between_pages_do_not_shift_later_pages(
    populated: tuple[Registry, dict[tuple[str, int], int]], tmp_path: Path
) -> None:
    reg, registered = populated
    first = reg.search("", order_by="name asc, version asc", limit=50)
    for i in range(20):  # lands before and after the cursor
        reg.register(f"model{i % 7}", tmp_path / "a.onnx")
    reg.delete(first[-1].name, first[-1].version)  # the cursor's own row disappears
    rest: list[ModelVersion] = []
    token = first.next_page_token
    while token is not None:
        page = reg.search("", order_by="name asc, version asc", limit=50, page_token=token)
        rest.extend(page)
        token = page.next_page_token
    seen = [(v.name, v.version) for v in [*first, *rest]]
    assert len(seen) == len(set(seen))
    assert seen == sorted(seen)
    assert set(registered) <= set(seen)


def _token(payload: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def test_bad_page_tokens_are_refused_clearly(
    populated: tuple[Registry, dict[tuple[str, int], int]],
) -> None:
    reg, _ = populated
    token = reg.search("tags.team = 'risk'", order_by="metrics.auc desc", limit=3).next_page_token
    assert token is not None
    decoded = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    bad = [
        ("not a token!", "is not a page token"),
        (_token(["a list"]), "is not a page token"),
        (_token({**decoded, "after": decoded["after"][:-1]}), "is not a page token"),
        (_token({**decoded, "after": ["0.9", 5]}), "is not a page token"),
        (_token({**decoded, "v": 99}), "is not a page token"),
        ("", "must be a non-empty string"),
    ]
    for text, message in bad:
        with pytest.raises(InvalidArgumentError, match=message) as e:
            reg.search("tags.team = 'risk'", order_by="metrics.auc desc", page_token=text)
        assert "next_page_token of the previous page of the same search" in str(e.value)
    with pytest.raises(InvalidArgumentError, match="another filter or order_by"):
        reg.search("tags.team = 'growth'", order_by="metrics.auc desc", page_token=token)
    with pytest.raises(InvalidArgumentError, match="another filter or order_by"):
        reg.search("tags.team = 'risk'", order_by="metrics.auc asc", page_token=token)
    # The same search with the same token still works after the refusals.
    assert len(reg.search("tags.team = 'risk'", order_by="metrics.auc desc", page_token=token))


def test_search_cli_pages_and_says_when_truncated(
    registry_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIARCH_HOME", str(tmp_path / "home"))
    reg = ["--registry", registry_url]

    def cli(*args: str) -> tuple[int, str, str]:
        code = main(["models", *args, *reg])
        out, err = capsys.readouterr()
        return code, out, err

    art = tmp_path / "a.onnx"
    art.write_bytes(b"a")
    for _ in range(5):
        assert cli("register", "m", str(art))[0] == 0

    code, out, err = cli("search", "", "--limit", "2")
    assert code == 0 and [ln.split()[1] for ln in out.strip().split("\n")[1:]] == ["5", "4"]
    assert "2 shown, more match: continue with --page-token " in err
    code, out, _ = cli("search", "", "--limit", "2", "--json")
    page = json.loads(out)
    assert [v["version"] for v in page["versions"]] == [5, 4] and page["truncated"] is True
    versions = [5, 4]
    while page["next_page_token"]:
        code, out, _ = cli(
            "search", "", "--limit", "2", "--page-token", page["next_page_token"], "--json"
        )
        page = json.loads(out)
        versions += [v["version"] for v in page["versions"]]
    assert versions == [5, 4, 3, 2, 1] and page["truncated"] is False
    code, out, err = cli("search", "", "--limit", "2", "--all", "--json")
    assert [v["version"] for v in json.loads(out)["versions"]] == [5, 4, 3, 2, 1]
    assert json.loads(out)["truncated"] is False and "more match" not in err
    code, _, err = cli("search", "", "--page-token", "garbage")
    assert code == 2 and "page_token 'garbage' is not a page token" in err
    assert "Traceback" not in err
