"""Start the page: a throw-away Chainlit app directory, then Chainlit's own server on `app.py`.

Chainlit reads `.chainlit/config.toml` from its app directory (`CHAINLIT_APP_ROOT`) when it is
imported, and writes default files there when they are missing. So `serve` makes a temporary
directory, writes our config into it (no telemetry, no file uploads, our page title), and only
then imports Chainlit; nothing is written next to the user's files, and the directory is removed
when the server stops.

Offline. Chainlit's index page links Google Fonts and a KaTeX stylesheet from a CDN. A browser
without network still renders the page, but only after those requests fail, which on a network
that drops packets can take a minute. The app directory therefore carries a copy of the index
page with every external `<link>`/`<script>` removed (Chainlit's `custom_build` setting), next to
Chainlit's own bundled scripts; the page falls back to the system's sans-serif font, and we turn
LaTeX rendering off, so nothing is lost.

The model is handed to `app.py` through environment variables: Chainlit loads the app file
itself, as a fresh module, in this same process. The password is not: it stays in this process's
memory, as the digest in `access.Login`, whose check is registered with Chainlit here.
"""

import importlib.util
import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from webapp import access

CONFIG_TOML = """\
[project]
enable_telemetry = false
user_env = []
session_timeout = 3600
cache = false
allow_origins = ["*"]

[features]
unsafe_allow_html = false
latex = false
user_message_markdown = false
edit_message = false
user_message_autoscroll = false

[features.spontaneous_file_upload]
enabled = false

[features.audio]
enabled = false

[features.mcp]
enabled = false

[UI]
name = "npgpt"
description = "Talk to a GPT-2 trained with npgpt"
cot = "hidden"
custom_css = "/public/npgpt.css"
custom_build = "build"
confirm_new_chat = false

[meta]
generated_by = "{version}"
"""

# The model's answer is shown verbatim in a code block: wrap long lines instead of scrolling.
# The browser's own scroll bars follow the page's dark or light theme.
CUSTOM_CSS = """\
pre, pre code { white-space: pre-wrap !important; overflow-wrap: anywhere; }
html.dark { color-scheme: dark; }
"""

README_MD = """\
# npgpt

Type some text and the model continues it: it is a language model, not a chat model, so each
message is a fresh prompt. The sampling settings are in the settings panel next to the message box.
"""

# Environment variables that hand the model to app.py.
ENV_CHECKPOINT = "NPGPT_WEB_CHECKPOINT"
ENV_BACKEND = "NPGPT_WEB_BACKEND"
ENV_DEVICE = "NPGPT_WEB_DEVICE"
ENV_DTYPE = "NPGPT_WEB_DTYPE"
ENV_APP_DIR = "NPGPT_WEB_APP_DIR"

EXTERNAL_TAG = re.compile(r"<(link|script)\b[^>]*\b(href|src)=\"https?://[^>]*>(\s*</script>)?")


def chainlit_package():
    """Chainlit's installed package directory, found without importing it."""
    spec = importlib.util.find_spec("chainlit")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0])


def offline_index(html):
    """Chainlit's index page without the tags that fetch fonts, styles or scripts from the web."""
    return EXTERNAL_TAG.sub("", html)


def write_app_dir(app_dir, chainlit_dir, version):
    """The Chainlit app directory: config, readme, our stylesheet and the offline index page."""
    (app_dir / ".chainlit").mkdir()
    (app_dir / ".chainlit" / "config.toml").write_text(CONFIG_TOML.format(version=version))
    (app_dir / "chainlit.md").write_text(README_MD)
    (app_dir / "public").mkdir()
    (app_dir / "public" / "npgpt.css").write_text(CUSTOM_CSS)
    dist = chainlit_dir / "frontend" / "dist"
    build = app_dir / "build"
    build.mkdir()
    (build / "index.html").write_text(offline_index((dist / "index.html").read_text()))
    shutil.copy(dist / "favicon.svg", build / "favicon.svg")
    (build / "assets").symlink_to(dist / "assets", target_is_directory=True)


class PortUnavailable(Exception):
    """The server could not listen on the address it was given."""


def check_port(host, port):
    """Fail now, with the address in the message, if the server could not listen there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise PortUnavailable(f"cannot listen on {host}:{port}: {err.strerror}") from None


def serve(checkpoint, backend, device, dtype, host, port, login=None):
    """Run the page until interrupted; behind Chainlit's login page when `login` (an
    `access.Login`) is given. Chainlit must be installed (see `chainlit_package`)."""
    from importlib.metadata import version

    check_port(host, port)
    app_dir = Path(tempfile.mkdtemp(prefix="npgpt-web-"))
    try:
        write_app_dir(app_dir, chainlit_package(), version("chainlit"))
        os.environ.update(
            {
                "CHAINLIT_APP_ROOT": str(app_dir),
                "CHAINLIT_HOST": host,
                "CHAINLIT_PORT": str(port),
                ENV_CHECKPOINT: str(checkpoint),
                ENV_BACKEND: backend,
                ENV_DEVICE: device,
                ENV_DTYPE: dtype,
                ENV_APP_DIR: str(app_dir),
            }
        )
        # With this key set, Chainlit would upload every conversation to Literal AI's cloud.
        os.environ.pop("LITERAL_API_KEY", None)
        if login is not None:
            os.environ[access.SECRET_ENV] = login.secret
        guard = "a password" if login else "no password"
        print(
            f"npgpt: serving {checkpoint} ({backend}) on http://{host}:{port} with {guard}",
            file=sys.stderr,
        )
        import chainlit as cl  # only now: Chainlit reads its config on import
        from chainlit.cli import run_chainlit
        from chainlit.config import config

        config.run.headless = True  # never open a browser on the server's machine
        if login is not None:
            cl.password_auth_callback(access.log_in_callback(login))
        run_chainlit(str(Path(__file__).with_name("app.py")))
    finally:  # a clean stop ends in app.py's shutdown hook instead: Chainlit calls os._exit
        shutil.rmtree(app_dir, ignore_errors=True)
