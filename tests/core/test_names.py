"""Label names from outside become safe file-name components."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from cxrkit.core.names import slug


def test_known_names() -> None:
    assert slug("Pleural Effusion") == "Pleural_Effusion"
    assert slug("Ödem") == "Odem"
    assert slug("x/../../bad/victim") == "x_.._.._bad_victim"
    assert slug("..") == "finding" and slug("") == "finding" and slug("肺") == "finding"
    assert slug("-rf") == "rf"


@given(st.text(max_size=200))
def test_any_name_gives_one_safe_component(name: str) -> None:
    s = slug(name)
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", s), s
    assert "/" not in s and "\\" not in s and s not in {".", ".."}
