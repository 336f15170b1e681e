"""The README's embedding snippets are excerpts of the example that the tests run."""

from __future__ import annotations

import re

from .conftest import EXAMPLES, ROOT


def test_readme_embedding_snippets_are_verbatim_from_the_example():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Embedding aiarch in your service", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 2
    example = (EXAMPLES / "fastapi_app.py").read_text()
    for block in blocks:
        assert block in example, f"README block not in examples/fastapi_app.py:\n{block}"
