"""Who may use the page: open on this machine, behind a password beyond it.

Served on a loopback address (127.0.0.0/8, ::1, localhost) the page is reachable only from this
machine, so it needs no password. On any other address, anyone who can reach the port could use
the model (and the machine's CPU or GPU), so `serve` refuses to start there without a password,
unless `--no-auth` says the operator wants an open page.

The password comes from a file only its owner can read (`--password-file`), or from the
environment (`NPGPT_WEB_PASSWORD`), never from the command line, where `ps` shows it to every
user of the machine. Chainlit's password login then guards the page: its login page posts the
password to `/login`, `log_in_callback` checks it, and Chainlit answers with a session cookie, a
token signed (HMAC-SHA256) with a secret made fresh at each server start, so a restart logs
everyone out; a fixed `CHAINLIT_AUTH_SECRET` keeps them logged in across restarts. A socket that
arrives without a valid token is refused before any chat session exists.

The password is kept only as its SHA-256 digest, and digests are compared in constant time.

>>> login = Login.with_password("correct horse")
>>> login.accepts("correct horse"), login.accepts("correct hors"), login.accepts("")
(True, False, False)
>>> "correct" in repr(login)
False
>>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("localhost")
(True, True, True)
>>> is_loopback("0.0.0.0"), is_loopback("192.168.1.5"), is_loopback("example.org")
(False, False, False)
"""

import asyncio
import hashlib
import hmac
import ipaddress
import os
import secrets
from dataclasses import dataclass, field

from frontend import UserError

PASSWORD_ENV = "NPGPT_WEB_PASSWORD"
SECRET_ENV = "CHAINLIT_AUTH_SECRET"  # Chainlit's name: the key that signs session tokens
SHORTEST_SECRET = 32  # characters; HMAC-SHA256 keys shorter than its 32-byte output weaken it
LONGEST_PASSWORD_FILE = 4096  # bytes: a password file holds one line
FAILED_LOGIN_DELAY = 1.0  # seconds before a wrong password is answered: guessing is slow


def digest(text):
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class Login:
    """What the page asks for: the password (as its digest) and the key signing session tokens.
    Neither is shown by repr, so neither can reach a log."""

    password_digest: bytes = field(repr=False)
    secret: str = field(repr=False)

    @classmethod
    def with_password(cls, password, secret=None):
        return cls(digest(password), secret or secrets.token_urlsafe(48))

    def accepts(self, attempt):
        # Digests have one length, so the comparison takes the same time whatever the attempt:
        # it tells neither how much of the password matched nor how long the password is.
        return hmac.compare_digest(self.password_digest, digest(attempt))


def is_loopback(host):
    """Whether `host` is an address only this machine can reach."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to an address others reach


def read_password_file(path):
    """The password in the file at `path` (one line; its line ending is not part of it)."""
    try:
        with open(path, "rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            # Windows has no such mode bits (every file shows 0o666): the check is POSIX's
            if os.name == "posix" and mode & 0o077:
                raise UserError(
                    f"the password file {path} can be read or changed by other users "
                    f"(mode {mode & 0o777:o}), so it protects nothing; make it yours alone: "
                    f"chmod 600 {path}"
                )
            data = file.read(LONGEST_PASSWORD_FILE + 1)
    except OSError as err:
        raise UserError(f"cannot read the password file {path}: {err.strerror}") from None
    if len(data) > LONGEST_PASSWORD_FILE:
        raise UserError(
            f"the password file {path} is over {LONGEST_PASSWORD_FILE} bytes; "
            "put only the password in it"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"the password file {path} is not UTF-8 text") from None
    password = text.removesuffix("\n").removesuffix("\r")
    if "\n" in password or "\r" in password:
        raise UserError(
            f"the password file {path} holds more than one line; put only the password in it"
        )
    return check_password(password, f"the password file {path}")


def check_password(password, source):
    if not password.strip():
        raise UserError(
            f"{source} holds an empty password; a page behind an empty password is open to anyone"
        )
    return password


def given_password(password_file, environ):
    """The password from --password-file or the environment, or None when neither gives one."""
    from_env = environ.get(PASSWORD_ENV)
    if password_file is not None and from_env is not None:
        raise UserError(
            f"the password is given twice, by --password-file and by {PASSWORD_ENV}; keep one"
        )
    if password_file is not None:
        return read_password_file(password_file)
    if from_env is not None:
        return check_password(from_env, PASSWORD_ENV)
    return None


def signing_secret(environ):
    """The key that signs session tokens: the one given in the environment, or a fresh one."""
    given = environ.get(SECRET_ENV)
    if given is None:
        return None
    if len(given) < SHORTEST_SECRET:
        raise UserError(
            f"{SECRET_ENV} is {len(given)} characters; a key that signs sessions needs "
            f"at least {SHORTEST_SECRET} (unset it for a fresh one each start)"
        )
    return given


def server_login(host, password_file=None, no_auth=False, environ=os.environ):
    """The Login the page served on `host` asks for, or None for an open page. A UserError
    when the page would be open beyond this machine without --no-auth saying so."""
    password = given_password(password_file, environ)
    if password is not None:
        if no_auth:
            raise UserError("--no-auth and a password contradict each other; drop one")
        return Login.with_password(password, signing_secret(environ))
    if no_auth or is_loopback(host):
        return None
    raise UserError(
        f"serving on {host} opens the page beyond this machine, so it needs a password: "
        f"--password-file PATH (a file only you can read) or {PASSWORD_ENV}; or --no-auth "
        "for an open page"
    )


def log_in_callback(login):
    """Chainlit's password callback for `login`: any user name, the one password."""
    import chainlit as cl

    async def log_in(username, password):
        if login.accepts(password):
            name = username.strip() or "guest"
            return cl.User(identifier=name[:64], metadata={"provider": "credentials"})
        await asyncio.sleep(FAILED_LOGIN_DELAY)
        return None

    return log_in
