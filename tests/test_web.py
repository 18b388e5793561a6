"""The web page in a real browser: `cli.py serve` on a free port, driven by headless Chromium.

The page must stream the very text `python cli.py generate` prints for the same prompt, settings
and seed; say what is wrong with a bad setting, an over-long prompt or a missing checkpoint in
the chat and keep serving; and give two sessions generating at the same time their own answers.
The browser cannot resolve any host but 127.0.0.1, so the page is also checked to render offline.
A page served with a password answers nobody who has not logged in: neither the browser nor a
client speaking Chainlit's socket.io protocol directly (`webapp.client`).

`NPGPT_WEB_SCREENSHOT=docs/web.png` saves a screenshot of the page mid-answer (for the README).
"""

import asyncio
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from npgpt.tokenizer import get_tokenizer

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
MISSING = [
    what
    for what, present in [
        ("chromium (apt-get install chromium)", CHROMIUM),
        ("chromedriver (apt-get install chromium-driver)", CHROMEDRIVER),
        ('selenium (pip install -e ".[dev]")', importlib.util.find_spec("selenium")),
        ('chainlit (pip install -e ".[web]")', importlib.util.find_spec("chainlit")),
    ]
    if not present
]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)}")

if not MISSING:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    from socketio.exceptions import ConnectionError as SocketRefused

    from webapp.client import ChatSession, LoginRefused, log_in

PROMPT = "The meaning of life is"
SETTINGS = {"temperature": "0.9", "top_k": "200", "top_p": "0.95", "max_new_tokens": "100"}
TIMEOUT = 30  # seconds for any one thing to appear on the page
PASSWORD = "open sesame"


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_checkpoint(directory):
    from npgpt import GPTConfig, init_params, save

    config = GPTConfig.preset("tiny")  # random weights: the test is about the page, not the text
    save(directory, config, init_params(config, seed=0))


def start_server(checkpoint, *options):
    """`python cli.py serve` on a free port, in its own process; `wait_until_up` waits for it."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "cli.py", "serve", "--checkpoint", str(checkpoint), "--port", str(port)]
        + list(options),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return server, f"http://127.0.0.1:{port}/"


def wait_until_up(server, url):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"serve exited with status {server.returncode}:\n{server.stdout.read()}")
        try:
            with urllib.request.urlopen(url + "health", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    server.kill()
    pytest.fail(f"serve did not answer at {url} within 60 s:\n{server.stdout.read()}")


def stop_server(server):
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    server.stdout.close()


def cli_generate(checkpoint, prompt, settings):
    """Start `python cli.py generate`; calling the result gives what it printed after the prompt."""
    options = [f"--{key.replace('_', '-')}={value}" for key, value in settings.items()]
    process = subprocess.Popen(
        [sys.executable, "cli.py", "generate", "--checkpoint", str(checkpoint), "--prompt", prompt]
        + options,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def printed():
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        assert out.startswith(prompt) and out.endswith("\n"), out
        return out[len(prompt) : -1]

    return printed


def new_browser():
    options = Options()
    options.binary_location = CHROMIUM
    for argument in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1000,700",
        # offline: every host name but the server's fails to resolve
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ]:
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def wait_for(driver, condition, what):
    try:
        return WebDriverWait(driver, TIMEOUT, poll_frequency=0.05).until(condition)
    except TimeoutException:
        pytest.fail(f"waited {TIMEOUT} s for {what}; the page's messages: {messages(driver)}")


def messages(driver):
    """The text of every message the page shows from the server, in order."""
    return driver.execute_script(
        "return [...document.querySelectorAll('[data-step-type=assistant_message]')]"
        ".map(m => m.textContent)"
    )


def open_chat(driver, url, first_message="Model:"):
    """A fresh chat session on the page; waits for the server's first message."""
    driver.get(url)
    wait_for(driver, lambda d: any(first_message in m for m in messages(d)), first_message)


def set_settings(driver, values):
    driver.find_element(By.ID, "chat-settings-open-modal").click()
    for key, value in values.items():
        field = wait_for(driver, lambda d, key=key: d.find_element(By.ID, key), f"field {key}")
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(Keys.DELETE)
        field.send_keys(value)
    driver.find_element(By.ID, "confirm").click()


def type_prompt(driver, prompt):
    field = wait_for(driver, lambda d: d.find_element(By.ID, "chat-input"), "the message box")
    field.send_keys(prompt)


def submit(driver):
    driver.find_element(By.ID, "chat-submit").click()


def send(driver, prompt):
    type_prompt(driver, prompt)
    submit(driver)


def answers(driver):
    """Each answer so far as (text, finished): the text is the code block the answer streams
    into (a code block shows the model's text verbatim); finished once the tokens/s line is in."""
    return driver.execute_script(
        "return [...document.querySelectorAll('[data-step-type=assistant_message]')]"
        ".filter(m => m.querySelector('pre code'))"
        ".map(m => [m.querySelector('pre code').textContent, m.textContent.includes('tokens/s')])"
    )


def code_text(shown):
    """A Markdown code block ends in a newline that is not part of its text."""
    assert shown.endswith("\n"), repr(shown)
    return shown[:-1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("web") / "tiny"
    write_checkpoint(directory)
    return directory


@pytest.fixture(scope="module")
def servers(checkpoint):
    """url -> the page for our checkpoint, missing -> one whose checkpoint is not there yet,
    locked -> our checkpoint behind a password. They start at once: most of a start is
    importing Chainlit, and the starts overlap."""
    missing = checkpoint.parent / "not-trained-yet"
    password_file = checkpoint.parent / "password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    started = {
        "url": start_server(checkpoint),
        "missing": start_server(missing),
        "locked": start_server(checkpoint, "--password-file", str(password_file)),
    }
    for server, url in started.values():
        wait_until_up(server, url)
    yield {name: url for name, (_, url) in started.items()} | {"missing_checkpoint": missing}
    for server, _ in started.values():
        stop_server(server)


@pytest.fixture(scope="module")
def url(servers):
    return servers["url"]


@pytest.fixture(scope="module")
def browser():
    driver = new_browser()
    yield driver
    driver.quit()


RECORD_TIMES = """
window.answerTimes = [];  // [ms since the epoch, characters shown, finished] at each change
new MutationObserver(() => {
  const m = [...document.querySelectorAll('[data-step-type=assistant_message]')]
    .filter(m => m.querySelector('pre code'));
  if (m.length) window.answerTimes.push([Date.now(),
    m[0].querySelector('pre code').textContent.replace(/[\\n\\u200b]/g, '').length,
    m[0].textContent.includes('tokens/s')]);
}).observe(document.body, {subtree: true, childList: true, characterData: true});
"""


def streaming_interval(driver):
    """When the answer showed its first character and when it finished (ms since the epoch)."""
    times = driver.execute_script("return window.answerTimes")
    first = min(t for t, length, _ in times if length > 0)
    return first, min(t for t, _, finished in times if finished)


def test_streams_the_answer_cli_generate_gives(browser, url, checkpoint):
    screenshot = os.environ.get("NPGPT_WEB_SCREENSHOT")
    settings = SETTINGS | {"seed": "1234"}  # 100 tokens: the window (64) slides, too
    expected = cli_generate(checkpoint, PROMPT, settings)  # runs while the browser works
    open_chat(browser, url)
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert all(name.startswith(url) for name in loaded), loaded  # nothing from the internet
    set_settings(browser, settings)
    browser.execute_script(RECORD_TIMES)
    send(browser, PROMPT)
    seen = []  # every state of the answer the page showed while it streamed

    def finished(driver):
        nonlocal screenshot
        shown = answers(driver)
        if shown:
            seen.append(shown[0][0])
            if screenshot and not shown[0][1] and len(shown[0][0]) > 150:
                driver.save_screenshot(screenshot)
                if not answers(driver)[0][1]:  # still streaming once taken: keep this one
                    screenshot = None
        return shown and shown[0][1]

    wait_for(browser, finished, "the answer")
    answer = code_text(answers(browser)[0][0])
    assert answer == expected()
    # while streaming, the page ends the text with a zero-width space (its cursor)
    shown = [text.rstrip("\n\u200b") for text in seen]
    assert all(answer.startswith(text) for text in shown), (shown, answer)
    # every change the page made, seen by a MutationObserver (polling can miss a fast stream)
    lengths = [length for _, length, _ in browser.execute_script("return window.answerTimes")]
    assert max(lengths) == len(answer.replace("\n", ""))
    partial = [length for length in lengths if 0 < length < max(lengths)]
    assert partial, "the answer appeared all at once: it did not stream"
    assert "parameters" in messages(browser)[-1] and "numpy" in messages(browser)[-1]


def test_bad_settings_and_long_prompts_are_said_in_the_chat(browser, url):
    open_chat(browser, url)
    set_settings(browser, {"top_p": "1.5"})
    problem = "Invalid setting: top-p must be in (0, 1], got 1.5"
    wait_for(browser, lambda d: problem in messages(d)[-1], "the invalid-setting message")
    send(browser, PROMPT)  # refused too, with the same reason
    wait_for(browser, lambda d: len(messages(d)) == 3 and problem in messages(d)[-1], "refusal")
    set_settings(browser, {"top_p": "0.9"})
    too_long = " ".join(["word"] * 80)  # 80 tokens; the tiny model's context is 64
    send(browser, too_long)
    problem = "The prompt is 80 tokens, but this model reads at most 64"
    wait_for(browser, lambda d: problem in messages(d)[-1], "the prompt-too-long message")
    send(browser, PROMPT)  # the server kept running, and answers what it can
    wait_for(browser, lambda d: answers(d) and answers(d)[0][1], "an answer")
    assert len(messages(browser)) == 5


def test_a_missing_checkpoint_is_said_in_the_chat_until_it_appears(browser, servers):
    """The page is served from a training run's directory before the run has written its
    first checkpoint: the chat says so, and answers once `checkpoint/` appears inside it."""
    open_chat(browser, servers["missing"], first_message="No model to answer with")
    said = messages(browser)[0]
    assert str(servers["missing_checkpoint"]) in said and "no such file or directory" in said
    write_checkpoint(servers["missing_checkpoint"] / "checkpoint")
    send(browser, PROMPT)  # loading is retried with each message
    wait_for(browser, lambda d: answers(d) and answers(d)[0][1], "an answer")


def in_process_generate(checkpoint, prompt, settings):
    """What `cli.py generate` prints after the prompt, computed here with the same npgpt calls."""
    from npgpt.generate import generate, stream_text
    from npgpt.weights.checkpoint import load
    from webapp.settings import DEFAULTS, parse

    config, params = load(checkpoint)
    prompt_ids = get_tokenizer().encode(prompt)
    sampling = parse(DEFAULTS | settings)  # the page's defaults, which are the CLI's
    return "".join(stream_text(generate(params, config, prompt_ids, sampling)))


def test_two_sessions_generating_at_once_get_their_own_answers(browser, url, checkpoint):
    settings = [{"seed": "1", "max_new_tokens": "100"}, {"seed": "2", "max_new_tokens": "100"}]
    prompts = [PROMPT, "Once upon a time"]
    other = new_browser()
    try:
        drivers = [browser, other]
        for driver, values in zip(drivers, settings, strict=True):
            open_chat(driver, url)
            set_settings(driver, values)
            driver.execute_script(RECORD_TIMES)
        for driver, prompt in zip(drivers, prompts, strict=True):
            type_prompt(driver, prompt)
        for driver in drivers:  # back to back
            submit(driver)
        for driver in drivers:
            wait_for(driver, lambda d: answers(d) and answers(d)[0][1], "an answer")
        got = [code_text(answers(driver)[0][0]) for driver in drivers]
        pairs = zip(prompts, settings, strict=True)
        expected = [in_process_generate(checkpoint, prompt, values) for prompt, values in pairs]
        assert got == expected
        (start_1, end_1), (start_2, end_2) = map(streaming_interval, drivers)
        assert max(start_1, start_2) < min(end_1, end_2), "one answer waited for the other"
    finally:
        other.quit()


def forged_cookie():
    """A session token in the form Chainlit signs, but signed with a key the server never had."""
    import jwt

    claims = {"identifier": "npgpt", "metadata": {}, "exp": int(time.time()) + 3600}
    return "access_token=" + jwt.encode(claims, "not the server's key " * 3, algorithm="HS256")


async def chat_without_a_browser(url, cookie, settings, prompt):
    """(first message, what the settings change drew, the answer) of one chat session."""
    session = ChatSession(url, cookie)
    try:
        first = await session.open(timeout=TIMEOUT)
        said = await session.change_settings(settings, timeout=TIMEOUT)
        return first, said, await session.ask(prompt, timeout=TIMEOUT)
    finally:
        await session.close()


def test_without_the_password_a_client_gets_no_answer(servers, checkpoint):
    from webapp.settings import DEFAULTS

    url = servers["locked"]
    settings = DEFAULTS | {"seed": "5", "max_new_tokens": "30"}
    for cookie in [None, forged_cookie()]:  # the socket is refused before a chat exists
        with pytest.raises(SocketRefused):
            asyncio.run(chat_without_a_browser(url, cookie, settings, PROMPT))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url + "user", timeout=TIMEOUT)
    assert refused.value.code == 401
    with pytest.raises(LoginRefused):
        log_in(url, PASSWORD + " ")
    cookie = log_in(url, PASSWORD)
    first, said, answer = asyncio.run(chat_without_a_browser(url, cookie, settings, PROMPT))
    assert first.startswith("Model:") and said == []
    assert answer.text == in_process_generate(checkpoint, PROMPT, settings)
    assert answer.first_token_s is not None  # it streamed


def test_the_page_asks_for_the_password_before_it_answers(browser, servers):
    url = servers["locked"]
    browser.get(url)
    browser.delete_all_cookies()  # a session token from an earlier login would let us in
    browser.get(url)
    try:
        wait_for(browser, lambda d: d.find_elements(By.ID, "password"), "the login form")
        assert browser.current_url == url + "login"
        assert messages(browser) == [] and not browser.find_elements(By.ID, "chat-input")
        browser.find_element(By.ID, "email").send_keys("reader")
        browser.find_element(By.ID, "password").send_keys(PASSWORD)
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait_for(browser, lambda d: any("Model:" in m for m in messages(d)), "the chat")
        send(browser, PROMPT)
        wait_for(browser, lambda d: answers(d) and answers(d)[0][1], "an answer")
    finally:
        browser.delete_all_cookies()  # cookies ignore the port: keep the other pages' tests clean
