"""A chat session on the page without a browser, for scripts and tests (`bench/bench_serve.py`).

It speaks Chainlit's socket.io protocol as the page's own script does, as far as a chat needs:

    POST /login            a form (username, password) when the page asks for a password; the
                           answer sets the session cookie `access_token`, a signed token
    connect /ws/socket.io  auth {sessionId, clientType, userEnv, chatProfile, threadId}, and the
                           cookie; without a valid one the server refuses the connection
    connection_successful  the server starts the chat: the settings panel, then "Model: ..."
    chat_settings_change   {field id: value}, what the settings panel's Confirm sends
    client_message         {message: a user_message step, fileReferences: []}
    new_message, stream_start, stream_token, update_message   the server's messages

An answer streams into a message (stream_start carries its first piece, stream_token the rest)
and is finished when update_message replaces it with the shown answer (`answer_format`); an
answer sent whole, or a problem said in the chat, is one new_message.
"""

import asyncio
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import datetime, timezone
from typing import NamedTuple

import socketio

from webapp.answer_format import unfenced

FINISHED = ("new_message", "update_message")  # events that carry a message in its final form


class LoginRefused(Exception):
    """The page did not accept the password."""


class Answer(NamedTuple):
    content: str  # the message as the page shows it
    text: str | None  # the model's text; None when the message says a problem instead
    first_token_s: float | None  # seconds from sending the prompt to its first streamed piece
    seconds: float  # seconds from sending the prompt to the finished message


def log_in(url, password, username="npgpt", timeout=30):
    """The Cookie header that opens a session on a page behind a password; LoginRefused when
    the password is wrong."""
    form = urllib.parse.urlencode({"username": username, "password": password}).encode()
    request = urllib.request.Request(url.rstrip("/") + "/login", data=form, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            cookies = response.headers.get_all("Set-Cookie") or []
    except urllib.error.HTTPError as err:
        if err.code == 401:
            raise LoginRefused(f"{url}: the password was refused") from None
        raise
    return "; ".join(cookie.split(";", 1)[0] for cookie in cookies)


class ChatSession:
    """One chat session, as a browser tab holds one: open, change settings, ask, close."""

    def __init__(self, url, cookie=None):
        self.url, self.cookie = url.rstrip("/"), cookie
        self.events = asyncio.Queue()  # (event, data, perf_counter when it arrived)
        self.socket = socketio.AsyncClient(reconnection=False)
        self.socket.on("*", self.received)

    async def received(self, event, data):
        self.events.put_nowait((event, data, time.perf_counter()))

    async def open(self, timeout=60):
        """Connect and start the chat; returns the server's first message ("Model: ...").
        socketio.exceptions.ConnectionError when the server refuses the connection."""
        auth = {
            "sessionId": str(uuid.uuid4()),
            "clientType": "webapp",
            "userEnv": "{}",
            "chatProfile": "",
            "threadId": "",
        }
        await self.socket.connect(
            self.url,
            headers={"Cookie": self.cookie} if self.cookie else {},
            auth=auth,
            transports=["websocket"],
            socketio_path="/ws/socket.io",
            wait_timeout=timeout,
        )
        await self.socket.emit("connection_successful")
        event, data, _ = await self.next_message(FINISHED, timeout)
        return data["output"]

    async def next_message(self, events, timeout):
        """The next (event, step, time) among `events` for an assistant message."""
        deadline = time.perf_counter() + timeout
        while True:
            left = deadline - time.perf_counter()
            event, data, at = await asyncio.wait_for(self.events.get(), max(left, 0))
            if event in events and data.get("type") == "assistant_message":
                return event, data, at

    async def change_settings(self, values, timeout=60):
        """What the settings panel's Confirm does, with every field's value (as it sends them);
        returns what the server said about them: [] when it took them, else its messages."""
        await self.socket.call("chat_settings_change", values, timeout=timeout)
        # The server said any problem before it acknowledged, and the client queues events in
        # the order they came: whatever it said is in the queue now.
        said = []
        while not self.events.empty():
            event, data, _ = self.events.get_nowait()
            if event in FINISHED and data.get("type") == "assistant_message":
                said.append(data["output"])
        return said

    async def ask(self, prompt, timeout=300):
        """Send `prompt` and wait for the next finished assistant message: its Answer."""
        step = {
            "id": str(uuid.uuid4()),
            "threadId": "",
            "name": "User",
            "type": "user_message",
            "output": prompt,
            "createdAt": datetime.now(timezone.utc).isoformat(),
        }
        start = time.perf_counter()
        await self.socket.emit("client_message", {"message": step, "fileReferences": []})
        first_token_s = None
        while True:
            left = start + timeout - time.perf_counter()
            event, data, at = await self.next_message(("stream_start", *FINISHED), left)
            if event == "stream_start":
                first_token_s = at - start
            else:
                content = data["output"]
                return Answer(content, unfenced(content), first_token_s, at - start)

    async def close(self):
        await self.socket.disconnect()
