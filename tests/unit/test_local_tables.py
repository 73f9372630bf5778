"""A worker keeps its local tables across a restart only after a clean stop (``stream.local_tables``)."""

from __future__ import annotations

from pathlib import Path

from stream.local_tables import LocalTables


def tables(tmp_path: Path) -> LocalTables:
    return LocalTables(tmp_path / "data" / "v1" / "tables", tmp_path / "data")


def test_first_start_has_nothing_to_rebuild(tmp_path: Path) -> None:
    assert tables(tmp_path).open()


def test_tables_are_kept_after_a_clean_stop_and_rebuilt_after_a_crash(tmp_path: Path) -> None:
    local = tables(tmp_path)
    local.open()
    local.table_dir.mkdir(parents=True)
    (local.table_dir / "account-state-0.db").write_text("state")
    local.stopped_cleanly()

    assert local.open()  # the last stop was clean: the tables stay
    assert (local.table_dir / "account-state-0.db").exists()

    # Started, then killed: no mark left, so the next start rebuilds from the changelogs.
    assert not local.open()
    assert not local.table_dir.exists()
    assert not local.mark.exists()
