"""A Hypothesis state machine drives every backend and compares it with a plain dict."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from kvstore import ConflictError, IdentityRecord, StateRecord
from tests.conftest import MakeDb

T = TypeVar("T")

SESSIONS = st.sampled_from(["s1", "s2", "s10", "s:1", "S1", "ü"])
STATES = st.sampled_from(["INTRODUCTION", "GOAL_SETTING", "IDENTITY_BRAINSTORMING", "CHAT"])
VERSIONS = st.integers(min_value=0, max_value=4)


class StoreMachine(RuleBasedStateMachine):
    """Saves, conditional saves, deletes and erasure of one user, checked against a dict."""

    def __init__(self, make_db: MakeDb) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.db = make_db()
        # A fresh user per run keeps runs apart on servers shared by the whole test session.
        self.user = f"user-{uuid.uuid4().hex[:12]}"
        self.other = self.user + "0"  # a user whose id extends ours must never be touched
        self.states: dict[str, tuple[int, str]] = {}
        self.identities: dict[str, int] = {}
        try:
            self.run(
                self.db.save_state(StateRecord(user_id=self.other, session_id="s1", state="X"))
            )
        except BaseException:  # no teardown() for a machine that was never built
            try:
                self.run(self.db.close())
            finally:
                self.loop.close()
            raise

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def teardown(self) -> None:
        try:
            self.run(self.db.delete_user(self.other))
            self.run(self.db.delete_user(self.user))
        finally:
            try:
                self.run(self.db.close())
            finally:
                self.loop.close()

    @rule(session=SESSIONS, state=STATES)
    def save(self, session: str, state: str) -> None:
        saved = self.run(
            self.db.save_state(StateRecord(user_id=self.user, session_id=session, state=state))
        )
        version = self.states.get(session, (0, ""))[0] + 1
        assert saved.version == version
        self.states[session] = (version, state)

    @rule(session=SESSIONS, state=STATES, expected=VERSIONS)
    def save_if(self, session: str, state: str, expected: int) -> None:
        current = self.states.get(session, (0, ""))[0]
        record = StateRecord(user_id=self.user, session_id=session, state=state)
        try:
            saved = self.run(self.db.save_state(record, expected_version=expected))
        except ConflictError as conflict:
            assert expected != current
            assert conflict.actual == current  # noqa: PT017 - a rule, not a test
            return
        assert expected == current
        assert saved.version == current + 1
        self.states[session] = (current + 1, state)

    @rule(session=SESSIONS, expected=st.none() | VERSIONS)
    def delete(self, session: str, expected: int | None) -> None:
        current = self.states.get(session, (0, ""))[0]
        try:
            existed = self.run(self.db.delete_state(self.user, session, expected_version=expected))
        except ConflictError:
            assert expected is not None
            assert expected != current
            return
        assert expected in (None, current)
        assert existed == (current > 0)
        self.states.pop(session, None)

    @rule(identity_id=SESSIONS)
    def save_identity(self, identity_id: str) -> None:
        saved = self.run(
            self.db.save_identity(
                IdentityRecord(user_id=self.user, identity_id=identity_id, category="c", name="n")
            )
        )
        self.identities[identity_id] = self.identities.get(identity_id, 0) + 1
        assert saved.version == self.identities[identity_id]

    @rule()
    def delete_user(self) -> None:
        erased = self.run(self.db.delete_user(self.user))
        assert erased == len(self.states) + len(self.identities)
        self.states.clear()
        self.identities.clear()

    @rule(session=SESSIONS)
    def get(self, session: str) -> None:
        stored = self.run(self.db.get_state(self.user, session))
        expected = self.states.get(session)
        if expected is None:
            assert stored is None
        else:
            assert stored is not None
            assert (stored.version, stored.state) == expected

    @invariant()
    def listings_match(self) -> None:
        listed = self.run(self.db.list_sessions(self.user))
        assert [(s.session_id, s.version, s.state) for s in listed] == [
            (session, *self.states[session]) for session in sorted(self.states)
        ]
        identities = self.run(self.db.get_identities(self.user))
        assert [(i.identity_id, i.version) for i in identities] == sorted(self.identities.items())


def test_backend_behaves_like_a_dict(make_db: MakeDb) -> None:
    class Machine(StoreMachine):
        def __init__(self) -> None:
            super().__init__(make_db)

    run_state_machine_as_test(
        Machine,
        settings=settings(max_examples=20, stateful_step_count=15, deadline=None),
    )
