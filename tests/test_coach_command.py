"""The README's command for the coach service starts it on the embedded default (a SQLite
file in the current directory), and it answers a conversation over real HTTP."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.redis_servers import free_port

ROOT = Path(__file__).parent.parent
COMMAND = re.compile(r"^\.venv/bin/pip install -e '\.\[service\]' && (.+)$", re.MULTILINE)


def readme_command() -> list[str]:
    """The first command of the README's service section, past its install step."""
    found = COMMAND.search((ROOT / "README.md").read_text(encoding="utf-8"))
    assert found is not None, "the README's service section lost its command"
    words = shlex.split(found.group(1))
    assert words[0] == ".venv/bin/uvicorn"
    return [sys.executable, "-m", "uvicorn", *words[1:]]


def test_the_readme_command_serves_on_the_embedded_default(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVSTORE_")}
    env["PYTHONPATH"] = str(ROOT)  # the command runs from a checkout; here, from tmp_path
    log = (tmp_path / "uvicorn.log").open("wb")
    server = subprocess.Popen(
        [*readme_command(), "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            give_up = time.monotonic() + 60
            while True:
                try:
                    health = client.get("/health")
                    break
                except httpx.TransportError:
                    assert server.poll() is None, (tmp_path / "uvicorn.log").read_text()
                    assert time.monotonic() < give_up, "the service did not start in 60 s"
                    time.sleep(0.1)
            assert health.json()["backend"] == "sql"
            body = {"message_id": "m1", "text": "Call me Sam."}
            answer = client.post("/users/u1/sessions/s1/messages", json=body).json()
            assert (answer["seq"], answer["state"]) == (1, "GOAL_SETTING")
            turns = client.get("/users/u1/sessions/s1/transcript").json()["turns"]
            assert [t["message_id"] for t in turns] == ["m1"]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
    assert (tmp_path / "kvstore.db").exists()  # the embedded default, where it was started
