"""Weight files are outside data: junk of any kind is one line, never a traceback, never unpickled."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import assert_one_line_error
from cxrkit.core.errors import CxrkitError
from cxrkit.model.networks import read_state_dict


@pytest.mark.parametrize(
    "content",
    [b"hello, not weights\n", b"\x80\x02}q\x00.", b"PK\x03\x04 not a zip", b"", b"\x00" * 64],
)
@pytest.mark.parametrize("suffix", [".pth", ".pt", ".safetensors", ".bin"])
def test_junk_weight_files_are_one_line(tmp_path: Path, content: bytes, suffix: str):
    path = tmp_path / f"w{suffix}"
    path.write_bytes(content)
    with pytest.raises(CxrkitError) as e:
        read_state_dict(path)
    assert "\n" not in str(e.value)


@settings(max_examples=150, deadline=None)
@given(content=st.binary(max_size=300))
def test_random_bytes_are_one_line(tmp_path_factory, content: bytes):
    path = tmp_path_factory.mktemp("w") / "w.pth"
    path.write_bytes(content)
    try:
        read_state_dict(path)
    except CxrkitError as e:
        assert "\n" not in str(e)


@pytest.mark.parametrize("kind", ["chexnet", "torchxrayvision"])
def test_import_commands_on_a_text_file(tmp_path: Path, run_cli, kind: str):
    path = tmp_path / "weights.pth"
    path.write_text("hello, not weights\n")
    code, _, err = run_cli("import", kind, path, "--out", tmp_path / "model")
    assert_one_line_error(code, err, "weights.pth")
    assert not (tmp_path / "model").exists()
