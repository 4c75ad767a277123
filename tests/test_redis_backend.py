"""Redis backend specifics: scripts after SCRIPT FLUSH, servers that stop, restart, never
answer or are unreachable, no KEYS/SCAN, connection URLs and options, masked passwords."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
from typing import TYPE_CHECKING

import fakeredis
import pytest
from redis.asyncio import Redis

from backends.redis import MAX_LEASE_TTL, build_redis_backend, lua
from backends.redis.connect import ConnectionSettings, connect
from backends.redis.format import member_key
from kvstore import BackendUnavailableError, ConfigurationError, DatabaseType, create_database
from kvstore.keys import Key
from kvstore.models import StateRecord
from tests.conftest import flushed_redis
from tests.redis_servers import RedisSentinel, RedisServer, free_port

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.redis_servers import RedisClusterServers

pytestmark = pytest.mark.timeout(60)
FAST = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5, "max_retries": 2}
WEIRD = ["a:b", "*", "?", "[x]", "back\\slash", "{tag}", "}{", "%", "x y", "*?[]\\{}:"]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server of this test; KEYS and SCAN are renamed away."""
    private = RedisServer(
        tmp_path / "redis", extra=("--rename-command", "KEYS", "", "--rename-command", "SCAN", "")
    ).start()
    yield private
    private.stop()


async def test_scripts_survive_script_flush(server: RedisServer) -> None:
    backend = build_redis_backend(server.url, {})
    admin = Redis(port=server.port)
    key = Key("state", ("u1", "s1"))
    try:
        await backend.put(key, b"1")
        await admin.script_flush()
        assert (await backend.put(key, b"2")).version == 2
        await admin.script_flush()
        [miss] = await backend.lookup([Key("state", ("u2", "s"))], lease_ttl=5)
        assert miss.lease is not None
        stored = await backend.get(key)
        assert stored is not None
        await admin.script_flush()
        assert await backend.fill([(Key("state", ("u2", "s")), stored, miss.lease)]) == 1
        assert await backend.delete(key, expected_version=2)
        await admin.script_flush()
        many = [Key("state", ("u3", f"s{i}")) for i in range(20)]
        entries = await asyncio.gather(*(backend.put(k, b"x") for k in many))  # one pipeline
        assert [entry.version for entry in entries] == [1] * 20
    finally:
        await backend.close()
        await admin.aclose()


@pytest.mark.redis_cluster
async def test_scripts_survive_script_flush_on_the_cluster(
    redis_cluster: RedisClusterServers,
) -> None:
    backend = build_redis_backend(redis_cluster.url, {})
    keys = [Key("state", (f"user{i}", "s")) for i in range(12)]
    try:
        for key in keys:
            await backend.put(key, b"1")
        for node in redis_cluster.nodes:
            admin = Redis(port=node.port)
            try:
                await admin.script_flush()
            finally:
                await admin.aclose()
        stored = await asyncio.gather(*(backend.put(key, b"2") for key in keys))
        assert {entry.version for entry in stored} == {2}
    finally:
        await backend.delete_owner("user0")
        await backend.close()


async def test_a_restarted_server_fails_fast_then_serves_again(server: RedisServer) -> None:
    backend = build_redis_backend(server.url, FAST)  # type: ignore[arg-type]
    key = Key("state", ("u1", "s1"))
    try:
        await backend.put(key, b"1")
        server.stop()
        with pytest.raises(BackendUnavailableError) as down:
            await backend.get(key)
        assert isinstance(down.value.__cause__, Exception)
        with pytest.raises(BackendUnavailableError):
            await backend.put(key, b"2")
        with pytest.raises(BackendUnavailableError):
            await backend.lookup([key], lease_ttl=1)
        server.start()
        assert await backend.get(key) is None  # no persistence on the private server
        assert (await backend.put(key, b"3")).version == 1  # scripts loaded again
        assert await backend.get(key) is not None
    finally:
        await backend.close()


async def test_an_unreachable_server_raises_backend_unavailable() -> None:
    db = create_database(
        DatabaseType.REDIS,
        f"redis://127.0.0.1:{free_port()}/0",
        **FAST,  # type: ignore[arg-type]
    )
    try:
        with pytest.raises(BackendUnavailableError):
            await db.get_state("u1", "s1")
        with pytest.raises(BackendUnavailableError):
            await db.initialize()
    finally:
        await db.close()


async def test_a_server_that_never_answers_times_out() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def swallow(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    silent = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    backend = build_redis_backend(
        f"redis://127.0.0.1:{port}/0", {"socket_timeout": 0.3, "health_check_interval": 0}
    )
    try:
        with pytest.raises(BackendUnavailableError) as timed_out:
            await backend.get(Key("state", ("u1", "s1")))
        assert "no answer in time" in str(timed_out.value)
        with pytest.raises(BackendUnavailableError):
            await backend.put(Key("state", ("u1", "s1")), b"1")
    finally:
        await backend.close()
        for writer in accepted:
            writer.close()
        silent.close()
        await silent.wait_closed()


async def test_nothing_uses_keys_or_scan(server: RedisServer) -> None:
    admin = Redis(port=server.port)
    try:
        with pytest.raises(Exception, match="unknown command"):
            await admin.execute_command("KEYS", "*")  # type: ignore[no-untyped-call]
    finally:
        await admin.aclose()
    async with create_database(DatabaseType.REDIS, server.url) as db:
        for weird in WEIRD:
            await db.save_state(StateRecord(user_id="u*", session_id=weird, state="A"))
        listed = [s.session_id for s in await db.list_sessions("u*")]
        assert listed == sorted(WEIRD, key=lambda s: s.encode())
        page = await db.states.page("u*", limit=3)  # type: ignore[attr-defined]
        assert [r.session_id for r in page.records] == listed[:3]
        assert await db.delete_user("u*") == len(WEIRD)
        assert await db.list_sessions("u*") == []


async def test_expired_index_members_are_cleaned_lazily(server: RedisServer) -> None:
    backend = build_redis_backend(server.url, {})
    admin = Redis(port=server.port)
    try:
        for name in ("a", "b", "c"):
            await backend.put(Key("notes", ("u1", name)), b"{}", ttl=0.2 if name != "b" else None)
        index = backend.redis.layout.index("u1", "notes")
        assert await admin.zcard(index) == 3
        await asyncio.sleep(0.5)
        assert [k.components for k, _ in await backend.list("notes", ("u1",), limit=2)] == [
            ("u1", "b")
        ]
        assert await admin.zcard(index) == 1
        assert await backend.delete_owner("u1") == 1
        epoch = backend.redis.layout.erase_epoch("u1")
        assert await admin.dbsize() == 1  # the erase epoch, fencing leases taken before
        assert await admin.exists(epoch) == 1
        assert 0 < await admin.pttl(epoch) <= MAX_LEASE_TTL * 1000
    finally:
        await backend.close()
        await admin.aclose()


async def test_erasing_a_large_user_and_refusing_a_stale_view() -> None:
    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    backend = build_redis_backend(None, {"redis_client": client})
    keys = [Key("notes", ("u1", f"n{i:04d}")) for i in range(1203)]  # past ERASE's 1000
    try:
        # One put at a time: every put is one call under its own deadline. Gathering them
        # all would queue 1200 scripts into one pipeline that fakeredis runs on this very
        # event loop, so each caller's deadline would pay for everyone else's scripts.
        for key in keys:
            await backend.put(key, b"x")
        await backend.put(Key("user", ("u1",)), b"me")
        layout = backend.redis.layout
        ns_set = layout.namespaces("u1")
        indexes = [layout.index("u1", ns) for ns in ("notes", "user")]
        listed: list[list[bytes]] = [await client.zrange(i, 0, -1) for i in indexes]  # type: ignore[misc]
        records = [
            layout.record(member_key("u1", ns, item))
            for ns, items in zip(("notes", "user"), listed, strict=True)
            for item in items
        ]
        leases = (layout.lease(name) for name in records)
        epoch = layout.erase_epoch("u1")
        view = [ns_set, *indexes, *records, *leases, layout.revision_counter("u1"), epoch]
        args: list[int | bytes] = [2, len(records), 60_000, *(len(items) for items in listed)]
        args += [item for items in listed for item in items]
        await backend.put(Key("notes", ("u1", "late")), b"x")  # lands after the view was read
        assert await backend.redis.ready().script(lua.ERASE, view, args) == -1
        await backend.delete(Key("notes", ("u1", "late")))
        assert await backend.redis.ready().script(lua.ERASE, view, args) == 1204
        await backend.put(Key("notes", ("u1", "again")), b"x")
        assert await backend.get(keys[0]) is None
        assert await backend.delete_owner("u1") == 1
        assert [k async for k in client.scan_iter()] == [epoch.encode()]
    finally:
        await backend.close()
        await client.aclose()


async def test_callers_wait_for_a_connection_instead_of_failing(server: RedisServer) -> None:
    backend = build_redis_backend(
        server.url, {"max_connections": 2, "autopipeline": False, "pool_wait_timeout": 5}
    )
    keys = [Key("state", ("u1", f"s{i}")) for i in range(60)]
    try:
        await asyncio.gather(*(backend.put(key, b"x") for key in keys))
        assert all(await asyncio.gather(*(backend.get(key) for key in keys)))
    finally:
        await backend.close()


async def test_unix_socket_urls_work(tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"
    private = RedisServer(
        tmp_path / "unix", extra=("--unixsocket", str(sock), "--unixsocketperm", "700")
    ).start()
    try:
        async with create_database(DatabaseType.REDIS, f"unix://{sock}?db=2") as db:
            saved = await db.save_state(StateRecord(user_id="u1", session_id="s1", state="A"))
            assert await db.get_state("u1", "s1") == saved
    finally:
        private.stop()


async def test_sentinel_urls_find_the_master(tmp_path: Path) -> None:
    master = RedisServer(tmp_path / "master")
    sentinel = RedisSentinel(tmp_path / "sentinel", master.port)
    try:
        master.start()
        sentinel.start()
        url = f"redis+sentinel://127.0.0.1:{sentinel.port}/mymaster/3"
        async with create_database(DatabaseType.REDIS, url) as db:
            saved = await db.save_state(StateRecord(user_id="u", session_id="s", state="A"))
            assert await db.get_state("u", "s") == saved
        admin = Redis(port=master.port, db=3)
        try:
            assert await admin.exists("kv:{u}:state:s") == 1
        finally:
            await admin.aclose()
    finally:
        sentinel.stop()
        master.stop()


async def test_passwords_never_show(tmp_path: Path) -> None:
    private = RedisServer(tmp_path / "auth", extra=("--requirepass", "rightpass")).start()
    url = f"redis://:wrongpass-s3cret@127.0.0.1:{private.port}/0"
    try:
        db = create_database(DatabaseType.REDIS, url, **FAST)  # type: ignore[arg-type]
        try:
            assert "s3cret" not in repr(db)
            with pytest.raises(BackendUnavailableError) as failed:
                await db.get_state("u1", "s1")
        finally:
            await db.close()
        assert "s3cret" not in str(failed.value)
        assert "***" in str(failed.value)
        async with create_database(
            DatabaseType.REDIS, f"redis://:rightpass@127.0.0.1:{private.port}/0"
        ) as good:
            assert await good.get_state("u1", "s1") is None
    finally:
        private.stop()
    with pytest.raises(ConfigurationError) as bad:
        create_database(DatabaseType.REDIS, "ftp://user:s3cret@host/0")
    assert "s3cret" not in str(bad.value)


async def test_an_injected_client_is_used_and_left_open() -> None:
    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    try:
        async with create_database(DatabaseType.REDIS, redis_client=client) as db:
            await db.save_state(StateRecord(user_id="u1", session_id="s1", state="A"))
        assert await client.ping()
        assert await client.exists("kv:{u1}:state:s1") == 1
    finally:
        await client.aclose()


async def test_clients_that_decode_responses_still_work(server: RedisServer) -> None:
    fake = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=True)
    real = Redis(port=server.port, decode_responses=True)
    try:
        for client in (fake, real):
            async with create_database(DatabaseType.REDIS, redis_client=client) as db:
                saved = await db.save_state(StateRecord(user_id="u1", session_id="é", state="A"))
                assert await db.get_state("u1", "é") == saved
                assert [s.session_id for s in await db.list_sessions("u1")] == ["é"]
                assert await db.delete_user("u1") == 1
    finally:
        await fake.aclose()
        await real.aclose()


def test_configuration_errors_are_typed() -> None:
    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    with pytest.raises(ConfigurationError):
        create_database(DatabaseType.REDIS, "redis://localhost/0", redis_client=client)
    with pytest.raises(ConfigurationError):
        create_database(DatabaseType.REDIS, redis_client=client, max_connections=3)
    with pytest.raises(ConfigurationError):
        create_database(DatabaseType.REDIS, "redis://localhost/0", socket_timeout=0)
    with pytest.raises(ConfigurationError):
        create_database(DatabaseType.REDIS, "redis://localhost/0", key_prefix="{bad}")
    with pytest.raises(ConfigurationError):
        create_database(DatabaseType.REDIS, "redis://localhost/0", pool_size=3)
    with pytest.raises(ConfigurationError):
        create_database(DatabaseType.REDIS, "redis+sentinel://:pw@host:26379")


async def test_every_url_scheme_builds_a_client_without_io() -> None:
    settings = ConnectionSettings()
    for url in (
        "redis://localhost:6379/1",
        "rediss://user:pw@localhost:6380/0",
        "unix:///tmp/none.sock?db=1",
        "redis+sentinel://:pw@h1:26379,h2:26380/mymaster/3",
        "redis+cluster://localhost:7000",
    ):
        client, closers = connect(url, settings)
        try:
            await client.aclose()
        finally:
            for close in closers:
                await close()


@pytest.mark.redis
async def test_the_shared_server_uses_only_its_own_database(shared_redis_url: str) -> None:
    await flushed_redis(shared_redis_url)
    async with create_database(DatabaseType.REDIS, shared_redis_url, key_prefix="t:") as db:
        await db.save_state(StateRecord(user_id="u1", session_id="s1", state="A"))
    admin = Redis.from_url(shared_redis_url)
    try:
        assert await admin.exists("t:{u1}:state:s1") == 1
    finally:
        await admin.flushdb()
        await admin.aclose()


@pytest.mark.redis
async def test_scan_finds_every_owner_whatever_its_id(shared_redis_url: str) -> None:
    await flushed_redis(shared_redis_url)
    backend = build_redis_backend(shared_redis_url, {"key_prefix": "scan:"})
    owners = ["*", "?", "[x]", "{tag}", "}{", "a:b", "back\\slash", "u1", "u10", "é"]
    try:
        for owner in owners:
            await backend.put(Key("state", (owner, "s")), owner.encode())
            await backend.put(Key("notes", (owner, "n")), b"x")
        scanned = [key async for key, _ in backend.scan(batch_size=3)]
        by_bytes = sorted(owners, key=str.encode)
        assert scanned == [Key("notes", (o, "n")) for o in by_bytes] + [
            Key("state", (o, "s")) for o in by_bytes
        ]
        copy = build_redis_backend(shared_redis_url, {"key_prefix": "copy:"})
        try:
            items = [item async for item in backend.scan()]
            assert await copy.restore(items) == len(items)
            assert await copy.restore(items) == 0
            copied = [item async for item in copy.scan()]
            unrevised = [(key, dataclasses.replace(entry, revision=0)) for key, entry in items]
            assert [(k, dataclasses.replace(e, revision=0)) for k, e in copied] == unrevised
        finally:
            await copy.close()
    finally:
        await backend.close()
        await flushed_redis(shared_redis_url)


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[RedisServer, Path]]:
    """A ``redis-server`` that speaks only TLS, with a self-signed certificate."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert),
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    port = free_port()
    server = RedisServer(
        tmp_path / "tls",
        port=port,
        extra=(
            "--port", "0", "--tls-port", str(port),
            "--tls-cert-file", str(cert), "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
        ),
    )  # fmt: skip
    server.start()
    try:
        yield server, cert
    finally:
        server.stop()


async def test_tls_connections_with_the_servers_certificate(
    tls_server: tuple[RedisServer, Path],
) -> None:
    server, cert = tls_server
    url = f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={cert}"
    async with create_database(DatabaseType.REDIS, url, **FAST) as db:  # type: ignore[arg-type]
        saved = await db.save_state(StateRecord(user_id="u1", session_id="s1", state="TLS"))
        assert await db.get_state("u1", "s1") == saved
    for wrong in (
        f"redis://127.0.0.1:{server.port}/0",  # plain TCP to a TLS port
        f"rediss://127.0.0.1:{server.port}/0",  # TLS without trusting the certificate
    ):
        db = create_database(DatabaseType.REDIS, wrong, **FAST)  # type: ignore[arg-type]
        try:
            with pytest.raises(BackendUnavailableError):
                await db.get_state("u1", "s1")
        finally:
            await db.close()
