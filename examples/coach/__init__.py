"""A small, runnable coach service wired to kvstore the way a real one would be.

- :mod:`.state_machine`: the conversation states and how a message moves between them.
- :mod:`.context`: the context manager, keeping the last N messages of a session.
- :mod:`.actions`: the action executor, adding and refining identities.
- :mod:`.step`: one step: the action, the next state, the reply.
- :mod:`.service`: the service layer: configures the store from the environment and handles
  one user message end to end (read state and context, act, save both).
- :mod:`.transcript`, :mod:`.progress`, :mod:`.turns`: a turn under the session's lock,
  exactly once per client message id, with its transcript record.
- :mod:`.app`: the service over HTTP (Starlette), for uvicorn.
"""

from examples.coach.service import CoachService, Reply

__all__ = ["CoachService", "Reply"]
