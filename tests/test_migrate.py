"""Record migration rewrites old-schema records, skips current ones, and resumes."""

from __future__ import annotations

from typing import Any, ClassVar

from kvstore import DatabaseType, Id, Record, create_database
from kvstore.migrate import migrate_collection
from kvstore.store import Store


class NoteV1(Record):
    KEY_FIELDS: ClassVar[tuple[str, ...]] = ("user_id", "note_id")
    user_id: Id
    note_id: Id
    text: str


class NoteV2(Record):
    SCHEMA_VERSION: ClassVar[int] = 2
    KEY_FIELDS: ClassVar[tuple[str, ...]] = ("user_id", "note_id")
    user_id: Id
    note_id: Id
    body: str


@NoteV2.upgrade(from_version=1)
def text_to_body(data: dict[str, Any]) -> dict[str, Any]:
    return {**{k: v for k, v in data.items() if k != "text"}, "body": data["text"]}


async def test_migration_upgrades_every_old_record_once() -> None:
    store = create_database(DatabaseType.MEMORY)
    assert isinstance(store, Store)
    old = store.collection(NoteV1, "notes")
    for n in range(25):
        await old.save(NoteV1(user_id=f"u{n % 3}", note_id=f"n{n}", text=f"note {n}"))
    new = store.collection(NoteV2, "notes")
    await new.save(NoteV2(user_id="u0", note_id="fresh", body="already v2"))

    report = await migrate_collection(new, batch_size=4)
    assert (report.scanned, report.migrated, report.conflicts) == (26, 25, 0)
    async for key, entry in store.backend.scan(namespace="notes"):
        assert store.serializer.schema_version(entry.value) == 2, key
    note = await new.get("u1", "n1")
    assert note is not None
    assert (note.body, note.version) == ("note 1", 2)

    again = await migrate_collection(new)
    assert (again.scanned, again.migrated) == (26, 0)  # resumable: nothing left to do
    await store.close()
