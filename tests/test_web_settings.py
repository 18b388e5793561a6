"""The web page's pieces that need no browser: the settings form and the offline app directory."""

import doctest

import pytest

import webapp.settings
from npgpt.sampling import SamplingSettings
from webapp.serve import CONFIG_TOML, offline_index, write_app_dir
from webapp.settings import DEFAULTS, SettingsError, parse


def test_settings_doctests_pass():
    result = doctest.testmod(webapp.settings)
    assert result.attempted > 0 and result.failed == 0


def test_defaults_are_the_cli_defaults():
    assert parse(DEFAULTS) == SamplingSettings()


def test_fields_typed_in_the_panel_are_parsed():
    form = {"temperature": " 0 ", "top_k": "1e1", "top_p": "1", "max_new_tokens": "7", "seed": "3"}
    assert parse(form) == SamplingSettings(0.0, 10, 1.0, 7, 3)
    big_seed = str(2**64 + 1)  # exact, not rounded through a float
    assert parse(DEFAULTS | {"seed": big_seed}).seed == 2**64 + 1


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("temperature", "-1", "temperature must be >= 0"),
        ("temperature", "hot", "Temperature must be a number >= 0; 0 = greedy, got 'hot'"),
        ("temperature", "nan", "Temperature must be a number"),
        ("temperature", "", "Temperature is empty"),
        ("top_k", "0", "top-k must be a positive integer"),
        ("top_k", "2.5", "Top-k must be a whole number >= 1; empty = off, got '2.5'"),
        ("top_p", "1.5", "top-p must be in (0, 1], got 1.5"),
        ("top_p", "0", "top-p must be in (0, 1], got 0"),
        ("max_new_tokens", "-3", "max new tokens must be >= 0"),
        ("max_new_tokens", None, "Max new tokens is empty"),
        ("seed", "-1", "seed must be a whole number >= 0"),  # the sampler's own rule
        ("seed", "inf", "Seed must be a whole number >= 0"),
    ],
)
def test_a_bad_field_is_named_with_what_it_accepts(field, value, message):
    with pytest.raises(SettingsError) as err:
        parse(DEFAULTS | {field: value})
    assert message in str(err.value)


CHAINLIT_INDEX = """<html><head>
<link rel="preconnect" href="https://fonts.googleapis.com" />
<link
  href="https://fonts.googleapis.com/css2?family=Inter&display=swap"
  rel="stylesheet"
/>
<script src="https://cdn.example.com/x.js"></script>
<script type="module" crossorigin src="/assets/index.js"></script>
<link rel="stylesheet" crossorigin href="/assets/index.css">
</head><body><div id="root"></div></body></html>"""


def test_the_index_page_loads_nothing_from_the_web():
    page = offline_index(CHAINLIT_INDEX)
    assert "http" not in page
    assert '<script type="module" crossorigin src="/assets/index.js"></script>' in page
    assert '<link rel="stylesheet" crossorigin href="/assets/index.css">' in page


def test_the_app_directory_turns_telemetry_off_and_serves_chainlits_scripts(tmp_path):
    tomllib = pytest.importorskip("tomllib", reason="reading TOML needs Python >= 3.11")
    chainlit = tmp_path / "chainlit"
    dist = chainlit / "frontend" / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text(CHAINLIT_INDEX)
    (dist / "favicon.svg").write_text("<svg/>")
    (dist / "assets" / "index.js").write_text("//")
    app = tmp_path / "app"
    app.mkdir()
    write_app_dir(app, chainlit, "2.12.0")
    config = tomllib.loads((app / ".chainlit" / "config.toml").read_text())
    assert config["project"]["enable_telemetry"] is False
    assert config["features"]["spontaneous_file_upload"]["enabled"] is False
    assert config["meta"]["generated_by"] == "2.12.0"
    assert (app / config["UI"]["custom_build"] / "assets" / "index.js").read_text() == "//"
    assert "http" not in (app / "build" / "index.html").read_text()
    assert tomllib.loads(CONFIG_TOML.format(version="x"))["UI"]["custom_css"].startswith("/public/")
    assert (app / "public" / "npgpt.css").is_file()
