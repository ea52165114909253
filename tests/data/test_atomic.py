"""dualvae.data.atomic: a file is replaced whole or not at all, and no temporary file is left behind."""
import json
import os

import pytest

from dualvae.data.atomic import atomic_output, copy_atomic, write_atomic, write_json_atomic, write_text_atomic


def test_writes_replace_the_file_whole(tmp_path):
    path = str(tmp_path / "sub" / "a.json")
    assert write_json_atomic(path, {"x": 1}) == path  # the folder is created
    assert json.loads(open(path).read()) == {"x": 1}
    write_text_atomic(path, "new\n")
    assert open(path).read() == "new\n"
    copy_atomic(path, str(tmp_path / "b.txt"))
    assert open(tmp_path / "b.txt").read() == "new\n"
    assert sorted(os.listdir(tmp_path / "sub")) == ["a.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")

    def half(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(str(path), half)
    with pytest.raises(KeyError):
        with atomic_output(str(path)) as tmp:
            open(tmp, "w").write("half")
            raise KeyError("stop")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]
    with atomic_output(str(path)) as tmp:  # a path-taking writer, closed before the block ends
        with open(tmp, "w") as f:
            f.write("h5")
    assert path.read_text() == "h5" and os.listdir(tmp_path) == ["a.txt"]
