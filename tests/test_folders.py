"""What `overwrite` may remove: the one check every command that empties or replaces a folder makes."""

import json
import os
from pathlib import Path

import pytest

from flyt_datacomp.errors import FlytInputError
from flyt_datacomp.folders import OutputFolder, check_apart, check_output_file, lock_folder, real_path, relation


def folder(path, **kw):
    return OutputFolder(Path(path), "the command", ("mine.json",), **kw)


def mark(path, command="the command"):
    """Write the marker ``mine.json`` as ``command`` writes it."""
    Path(path).write_text(json.dumps({"written_by": command}))


def test_relation_and_real_paths(tmp_path, monkeypatch):
    a = tmp_path / "a"
    (a / "b").mkdir(parents=True)
    assert relation(a, a) == "is" and relation(a, a / "b") == "contains" and relation(a / "b", a) == "lies inside"
    assert relation(tmp_path / "ab", a) is None and relation(a, tmp_path / "ab") is None  # not a string prefix
    monkeypatch.chdir(a / "b")
    monkeypatch.setenv("HOME", str(a))
    assert real_path(".") == real_path("..//b/") == real_path("~/b") == real_path(f"file://{a}/b") == (a / "b").resolve()
    (tmp_path / "link").symlink_to(a / "b")
    assert real_path(tmp_path / "link") == (a / "b").resolve()


def test_check_apart_names_the_input_and_how(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    inputs = {"shards_dir": shards, "the subset file": tmp_path / "s.npy", "remote": "s3://bucket/x"}
    for path, how in ((shards, "is"), (tmp_path, "contains"), (shards / "x", "lies inside")):
        with pytest.raises(FlytInputError, match=f"{how} the `shards_dir`") as err:
            check_apart(path, inputs, what="`output_dir`", params=["output_dir"])
        assert set(err.value.params) == {"output_dir", "shards_dir"}
    with pytest.raises(FlytInputError, match="is the subset file"):
        check_apart(tmp_path / "s.npy", inputs, what="log")
    assert check_apart(tmp_path / "elsewhere", inputs, what="x") == (tmp_path / "elsewhere").resolve()
    # several sources joined with ::, each checked; an fsspec chain is remote
    with pytest.raises(FlytInputError, match="lies inside"):
        check_apart(shards / "y", {"data": f"{tmp_path / 'other'}::{shards}"}, what="x")
    check_apart(shards / "y", {"data": f"simplecache::s3://b/{shards}"}, what="x")


def test_output_folder_refuses_what_it_may_not_empty(tmp_path, monkeypatch):
    f = folder(tmp_path / "absent")
    f.check(overwrite=False)
    assert f.empty().is_dir()
    f.check(overwrite=False)  # empty
    (tmp_path / "absent" / "x").write_text("x")
    with pytest.raises(FlytInputError, match="not empty; set `overwrite`"):
        f.check(overwrite=False)
    with pytest.raises(FlytInputError, match="did not write .* mine.json"):
        f.check(overwrite=True)
    with pytest.raises(FlytInputError, match="did not write"):
        f.empty()
    assert (tmp_path / "absent" / "x").exists()
    mark(tmp_path / "absent" / "mine.json")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    (tmp_path / "absent" / "link").symlink_to(outside)
    f.empty()
    assert not any((tmp_path / "absent").iterdir()) and (outside / "keep").exists()  # links are not followed
    (tmp_path / "file").write_text("x")
    with pytest.raises(FlytInputError, match="not a folder"):
        folder(tmp_path / "file").check(overwrite=True)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(FlytInputError, match="does not exist"):
        folder(tmp_path / "dangling").check(overwrite=True)
    with pytest.raises(FlytInputError, match="root folder"):
        folder("/").check(overwrite=True)
    home = tmp_path / "home" / "me"
    home.mkdir(parents=True)
    mark(home / "mine.json")
    monkeypatch.setenv("HOME", str(home))
    for path in ("~", home, tmp_path / "home"):
        with pytest.raises(FlytInputError, match="home folder"):
            folder(path).check(overwrite=True)
    folder(home / "work").check(overwrite=True)  # a folder inside the home folder is fine


def test_output_folder_through_a_symlink_checks_its_target(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "keep").write_text("keep")
    (tmp_path / "out").symlink_to(data)
    with pytest.raises(FlytInputError, match=f"a link to {data}"):
        folder(tmp_path / "out").check(overwrite=True)
    with pytest.raises(FlytInputError, match="is the `src`"):
        folder(tmp_path / "out", inputs={"src": data}).check(overwrite=True)


def test_replace_with_keeps_the_link(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    mark(real / "mine.json")
    (tmp_path / "out").symlink_to(real)
    new = tmp_path / ".new"
    new.mkdir()
    (new / "mine.json").write_text("new")
    folder(tmp_path / "out").replace_with(new, overwrite=True)
    assert (tmp_path / "out").is_symlink() and (real / "mine.json").read_text() == "new" and not new.exists()


def test_a_second_writer_is_refused_while_one_holds_the_folder(tmp_path):
    f = folder(tmp_path)
    with f.lock():
        with pytest.raises(FlytInputError, match="in use by another command"):
            with lock_folder(tmp_path, "folder"):
                pass
    with lock_folder(tmp_path, "folder"):  # released
        pass


def test_check_output_file(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(FlytInputError, match="is a folder"):
        check_output_file(tmp_path / "dir", {}, what="results file")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    with pytest.raises(FlytInputError, match="not a file"):
        check_output_file(tmp_path / "dangling", {}, what="results file")
    with pytest.raises(FlytInputError, match="lies inside the `evalsets_dir`"):
        check_output_file(tmp_path / "dir" / "r.jsonl", {"evalsets_dir": tmp_path / "dir"}, what="results file")
    assert check_output_file(tmp_path / "r.jsonl", {"evalsets_dir": tmp_path / "dir"}, what="x") == tmp_path / "r.jsonl"


def test_emptying_deletes_the_markers_last(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    for name in ["z.tar", "flyt_reshard.json", "a.tar", "sub", "m.json", "flyt_reshard_partial.json"]:
        (out / name).mkdir() if name == "sub" else mark(out / name)
    order = []
    real_unlink = Path.unlink
    monkeypatch.setattr(Path, "unlink", lambda self, *a, **k: (order.append(self.name), real_unlink(self, *a, **k)))
    OutputFolder(out, "the command", ("flyt_reshard.json", "flyt_reshard_partial.json")).empty()
    assert not any(out.iterdir()) and len(order) == 5
    assert sorted(order[-2:]) == ["flyt_reshard.json", "flyt_reshard_partial.json"]  # a cut-short emptying leaves one


def test_only_a_marker_naming_the_command_as_its_writer_counts(tmp_path):
    """A file of the marker's name is not enough: a demo pool's build.json, another program's, an
    empty record, a link to a real marker, or another command's marker leave the folder untouched."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "data.bin").write_bytes(b"precious")
    real = tmp_path / "real-marker.json"
    mark(real)
    for content in ('{"kind": "demo-pool", "package": "flyt-datacomp"}', "{}", "not json", "[1]",
                    '{"written_by": "another command"}', '{"written_by": ["the command"]}', None):
        marker = out / "mine.json"
        marker.unlink(missing_ok=True)
        if content is None:
            marker.symlink_to(real)
        else:
            marker.write_text(content)
        assert not folder(out).is_own()
        with pytest.raises(FlytInputError, match="its mine.json is no record written by the command"):
            folder(out).empty()
        assert (out / "data.bin").read_bytes() == b"precious" and os.path.lexists(marker)
    marker.unlink()
    mark(marker)
    record = folder(out).record(extra=1)
    assert record["written_by"] == "the command" and record["extra"] == 1 and "version" in record
    assert folder(out).is_own()
    folder(out).empty()
    assert not any(out.iterdir())
