"""Who may use the page (`webapp.access`), decided before anything starts: `cli.py serve` on an
address beyond this machine needs a password or an explicit --no-auth, and the password comes
from a file only its owner can read or from the environment. Also the answer format a script
reads answers back through. The page itself, locked and unlocked, is tested in test_web.py."""

import asyncio
import doctest
import os

import pytest
from click.testing import CliRunner

import cli
import webapp.access
import webapp.answer_format
import webapp.serve
from frontend import UserError
from webapp.access import PASSWORD_ENV, SECRET_ENV, Login, read_password_file, server_login
from webapp.answer_format import fenced, unfenced

posix_modes = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX's")


def test_doctests_pass():
    for module in (webapp.access, webapp.answer_format):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


@pytest.fixture
def started(monkeypatch):
    """Runs `cli.py serve` with the page's start replaced by a recorder: what it was given."""
    calls = []
    monkeypatch.setattr(webapp.serve, "chainlit_package", lambda: "chainlit")
    monkeypatch.setattr(webapp.serve, "serve", lambda *args: calls.append(args))
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    monkeypatch.delenv(SECRET_ENV, raising=False)

    def serve(*options, env=None):
        result = CliRunner().invoke(cli.main, ["serve", "--checkpoint", "ckpt", *options], env=env)
        return result, calls

    return serve


def password_file(tmp_path, text, mode=0o600):
    path = tmp_path / "password"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_page_beyond_this_machine_needs_a_password(started):
    result, calls = started("--host", "0.0.0.0")
    assert result.exit_code == 1 and calls == []
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1
    assert "0.0.0.0" in message and "needs a password" in message and "--no-auth" in message


def test_no_auth_beyond_this_machine_warns_and_serves_an_open_page(started):
    result, calls = started("--host", "0.0.0.0", "--port", "9000", "--no-auth")
    assert result.exit_code == 0
    assert "warning: --no-auth" in result.stderr and "0.0.0.0:9000" in result.stderr
    assert calls[0][-1] is None  # no Login: an open page


def test_loopback_needs_no_password_but_a_given_one_is_asked_for(started, tmp_path):
    for host in ["127.0.0.1", "localhost", "::1", "127.8.9.10"]:
        result, calls = started("--host", host)
        assert result.exit_code == 0 and result.stderr == "" and calls[-1][-1] is None, host
    result, calls = started(env={PASSWORD_ENV: "from the environment"})
    login = calls[-1][-1]
    assert result.exit_code == 0 and login.accepts("from the environment")
    assert "from the environment" not in result.output
    path = password_file(tmp_path, "from a file\n")
    result, calls = started("--host", "0.0.0.0", "--password-file", str(path))
    assert result.exit_code == 0 and calls[-1][-1].accepts("from a file")


@posix_modes
def test_a_password_file_others_can_read_is_refused(tmp_path):
    for mode in [0o644, 0o640, 0o620, 0o604]:
        path = password_file(tmp_path, "secret\n", mode)
        with pytest.raises(UserError) as refused:
            read_password_file(path)
        message = str(refused.value)
        assert f"mode {mode:o}" in message and "other users" in message
        assert f"chmod 600 {path}" in message and "secret" not in message.replace(str(path), "")


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty password"),
        ("\n", "empty password"),
        ("   \n", "empty password"),
        ("one\ntwo\n", "more than one line"),
        ("x" * 5000, "over 4096 bytes"),
    ],
)
def test_a_password_file_that_holds_no_single_password_is_refused(tmp_path, text, reason):
    path = password_file(tmp_path, text)
    with pytest.raises(UserError, match=reason):
        read_password_file(path)


def test_a_password_file_is_one_line_without_its_line_ending(tmp_path):
    assert read_password_file(password_file(tmp_path, " two words \r\n")) == " two words "
    assert read_password_file(password_file(tmp_path, "no newline")) == "no newline"
    path = password_file(tmp_path, "x")
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(UserError, match="not UTF-8"):
        read_password_file(path)
    with pytest.raises(UserError, match="cannot read the password file .*: No such file"):
        read_password_file(tmp_path / "missing")


def test_contradictions_and_weak_keys_are_refused(tmp_path):
    path = password_file(tmp_path, "secret\n")
    cases = [
        (dict(password_file=path), {PASSWORD_ENV: "other"}, "given twice"),
        (dict(no_auth=True), {PASSWORD_ENV: "secret"}, "contradict"),
        ({}, {PASSWORD_ENV: ""}, f"{PASSWORD_ENV} holds an empty password"),
        ({}, {PASSWORD_ENV: "secret", SECRET_ENV: "short"}, "at least 32"),
    ]
    for options, environ, reason in cases:
        with pytest.raises(UserError, match=reason):
            server_login("127.0.0.1", environ=environ, **options)


def test_the_signing_key_is_fresh_at_each_start_unless_given():
    first = server_login("0.0.0.0", environ={PASSWORD_ENV: "secret"})
    second = server_login("0.0.0.0", environ={PASSWORD_ENV: "secret"})
    assert len(first.secret) >= 32 and first.secret != second.secret
    given = "k" * 40
    assert server_login("0.0.0.0", environ={PASSWORD_ENV: "s", SECRET_ENV: given}).secret == given
    assert "secret" not in repr(first) and first.secret not in repr(first)


def test_the_login_callback_accepts_the_password_alone(monkeypatch):
    pytest.importorskip("chainlit", reason='needs chainlit (pip install -e ".[web]")')
    monkeypatch.setattr(webapp.access, "FAILED_LOGIN_DELAY", 0)
    log_in = webapp.access.log_in_callback(Login.with_password("secret"))
    user = asyncio.run(log_in("  reader ", "secret"))
    assert user.identifier == "reader"
    for attempt in ["Secret", "secret ", "", "secret\n"]:
        assert asyncio.run(log_in("reader", attempt)) is None, attempt


@pytest.mark.parametrize(
    "text",
    ["plain", "a\nb\n", "````", "```text\n```", "ends with a tick`", "\n````\n\n*x*"],
)
def test_an_answer_is_read_back_as_it_was_written(text):
    assert unfenced(fenced(text) + "\n\n*12 tokens in 0.1 s*") == text
    assert unfenced("⚠️ Invalid setting: top-p must be in (0, 1]") is None
    assert unfenced("````text\nnot closed") is None


@posix_modes
def test_a_password_file_owned_alone_is_read_from_the_command_line(started, tmp_path):
    path = password_file(tmp_path, "secret\n", 0o400)
    result, calls = started("--password-file", str(path))
    assert result.exit_code == 0 and calls[-1][-1].accepts("secret")
    result, _ = started("--password-file", str(password_file(tmp_path, "secret\n", 0o666)))
    assert result.exit_code == 1 and "chmod 600" in result.stderr
