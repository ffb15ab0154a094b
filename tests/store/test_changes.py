"""The store's change feed: names written by one process are read by another, once; a
replaced (restarted) feed makes readers re-read everything."""

from __future__ import annotations

from qkms.store import changes
from qkms.store.changes import RELOAD_ALL, ChangeFeed, parse_names


def test_parse_names_keeps_a_torn_line_for_later() -> None:
    assert parse_names(b"a/b\nc/d\ne/") == (["a/b", "c/d"], False)
    assert parse_names(b"a\n\x00restart\n") == (["a"], True)


def test_a_reader_sees_each_write_once_and_nothing_before_it_started(tmp_path) -> None:
    writer = ChangeFeed(tmp_path)
    writer.note("payments/old")
    reader = ChangeFeed(tmp_path)  # loaded what came before
    assert reader.poll() == []
    writer.note("payments/signing")
    writer.note("payments/other\nforged")  # one line per note, whatever the name holds
    assert reader.poll() == ["payments/signing", "payments/other forged"]
    assert reader.poll() == []
    reader.close()
    writer.close()


def test_a_restarted_feed_makes_readers_reload_everything(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(changes, "LIMIT", 64)
    writer, reader = ChangeFeed(tmp_path), ChangeFeed(tmp_path)
    for n in range(10):
        writer.note(f"payments/key-{n}")
    assert reader.poll() is RELOAD_ALL  # the file was replaced: everything is re-read
    writer.note("payments/after")
    assert reader.poll() == ["payments/after"]  # and the new file is followed
    assert (tmp_path / "changes").stat().st_size < 64


def test_an_unchanged_count_answers_without_reading_the_file(tmp_path, monkeypatch) -> None:
    """The usual poll reads the mapped count only: no fstat, no read. A note moves the
    count after its line is written, so a reader that sees the count move finds the line;
    a feed whose count cannot be mapped reads the file on every poll, as before."""
    writer, reader = ChangeFeed(tmp_path), ChangeFeed(tmp_path)
    calls = []
    real_fstat = changes.os.fstat
    monkeypatch.setattr(changes.os, "fstat", lambda fd: calls.append(fd) or real_fstat(fd))
    for _ in range(100):
        assert reader.poll() == []
    assert calls == []
    writer.note("payments/signing")
    assert reader.poll() == ["payments/signing"] and reader.poll() == []
    assert (tmp_path / "changes.seq").stat().st_mode & 0o777 == 0o600
    (tmp_path / "changes.seq").unlink()
    (tmp_path / "changes.seq").mkdir()  # cannot be mapped: this reader reads the file each time
    unmapped = ChangeFeed(tmp_path)
    assert unmapped._count is None  # noqa: SLF001 - the fallback is what is tested
    writer.note("payments/other")
    assert unmapped.poll() == ["payments/other"] and reader.poll() == ["payments/other"]
    assert unmapped.poll() == [] and len(calls) > 1
    for feed in (writer, reader, unmapped):
        feed.close()
