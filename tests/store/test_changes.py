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
