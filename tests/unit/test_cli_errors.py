"""No ``acr-ingest`` command ends in a traceback, whatever the settings or the database: every command run
in-process (click's CliRunner) against each invalid setting, an unmigrated database, an unreachable one, a
garbage URL and drivers that do not exist or are not installed, answers one line with exit status 2 (usage,
configuration) or 1 (a dependency down). ``--debug`` and ACR_INGEST_DEBUG=1 keep the traceback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from ingest.cli.commands import main
from ingest.settings import reset_settings, unknown_variables
from tests.conftest import MEDIA

CATALOG = "ref,title,url\nE-1,One,https://cdn.example.com/e1.mp3\n"

# Every command with arguments that get it past its own option checks to the settings and the database.
COMMANDS: list[list[str]] = [
    ["upload-url", "https://cdn.example.com/a.mp3", "--title", "t", "--bucket", "1"],
    ["upload-file", "cli-errors.wav", "--title", "t", "--bucket", "1"],
    ["update-meta", "--ref", "a", "--title", "t", "--bucket", "1"],
    ["delete", "--ref", "a", "--bucket", "1"],
    ["move", "--ref", "a", "--bucket", "1", "--to", "2"],
    ["status"],
    ["status", "--json"],
    ["files"],
    ["failures"],
    ["retry-failed"],
    ["show", "X"],
    ["show", "--op", "1"],
    ["import", "catalog.csv", "--bucket", "1"],
    ["import", "catalog.csv", "--bucket", "1", "--dry-run"],
    ["import", "catalog.csv", "--bucket", "1", "--status"],
    ["sync", "catalog.csv", "--bucket", "1"],
    ["sync", "catalog.csv", "--bucket", "1", "--prune", "--apply"],
    ["reconcile", "--bucket", "1"],
    ["db", "upgrade"],
]
# Commands that report on the database by design (several lines), and those that start a process: run only
# against bad settings, which they must refuse before starting anything.
REPORTS = [["health"], ["db", "current"]]
PROCESSES = [["worker"], ["beat"], ["emulator"], ["metrics"], ["flower"], ["probe", "--show"], ["config"]]

SETTINGS = {
    "max_attempts_zero": ({"ACR_INGEST_MAX_ATTEMPTS": "0"}, "ACR_INGEST_MAX_ATTEMPTS"),
    "max_attempts_text": ({"ACR_INGEST_MAX_ATTEMPTS": "abc"}, "ACR_INGEST_MAX_ATTEMPTS"),
    "region": ({"ACR_INGEST_REGION": "mars"}, "ACR_INGEST_REGION"),
    "log_format": ({"ACR_INGEST_LOG_FORMAT": "xml"}, "ACR_INGEST_LOG_FORMAT"),
    "rate_limit": ({"ACR_INGEST_RATE_LIMIT": "-1"}, "ACR_INGEST_RATE_LIMIT"),
    "consumer_timeout": (
        # Where a countdown has a bound: RabbitMQ's consumer_timeout (our Redis transport sets none).
        {
            "ACR_INGEST_BROKER_URL": "amqp://guest:pw@127.0.0.1:1//",
            "ACR_INGEST_RABBITMQ_CONSUMER_TIMEOUT": "100",
            "ACR_INGEST_BACKOFF_MAX": "300",
        },
        "ACR_INGEST_RABBITMQ_CONSUMER_TIMEOUT",
    ),
    "webhook_without_secret": ({"ACR_INGEST_WEBHOOK_URL": "https://hooks.example.com/x"}, "ACR_INGEST_WEBHOOK_SECRET"),
    "rabbitmq_rate_limit": (
        {"ACR_INGEST_BROKER_URL": "amqp://guest:pw@127.0.0.1:1//", "ACR_INGEST_RATE_LIMIT": "5"},
        "ACR_INGEST_RATE_LIMIT_REDIS_URL",
    ),
    "fixed_without_rate": ({"ACR_INGEST_RATE_LIMIT_MODE": "fixed"}, "ACR_INGEST_RATE_LIMIT"),
    "metrics_port": ({"ACR_INGEST_METRICS_PORT": "99999"}, "ACR_INGEST_METRICS_PORT"),
    # 0 sent 8,278 polls in 20 s.
    "poll_interval_zero": ({"ACR_INGEST_POLL_INTERVAL": "0"}, "ACR_INGEST_POLL_INTERVAL=0: Input should be greater"),
    "poll_interval_tiny": ({"ACR_INGEST_POLL_INTERVAL": "0.001"}, "ACR_INGEST_POLL_INTERVAL=0.001"),
    "poll_interval_nan": ({"ACR_INGEST_POLL_INTERVAL": "nan"}, "ACR_INGEST_POLL_INTERVAL=nan"),
    "fingerprint_nice_high": (
        {"ACR_INGEST_FINGERPRINT_NICE": "20"},
        "ACR_INGEST_FINGERPRINT_NICE=20: Input should be less than or equal to 19",
    ),
    "fingerprint_nice_negative": ({"ACR_INGEST_FINGERPRINT_NICE": "-5"}, "ACR_INGEST_FINGERPRINT_NICE=-5"),
}
DATABASES = {
    "unmigrated": ("sqlite:///{tmp}/fresh.db", 2, "acr-ingest db upgrade"),
    "unreachable": ("postgresql+psycopg://acr:s3cret@127.0.0.1:1/acr", 1, "unreachable"),
    "garbage_url": ("not a database url", 2, "ACR_INGEST_DATABASE_URL"),
    "unknown_driver": ("nosuchdb://host/db", 2, "ACR_INGEST_DATABASE_URL"),
    "driver_not_installed": ("mysql+nosuchdriver://u@127.0.0.1/db", 2, "ACR_INGEST_DATABASE_URL"),
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """Settings from the test's own environment, in a folder of its own (no .env, reports land there)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "catalog.csv").write_text(CATALOG)
    (MEDIA / "cli-errors.wav").write_bytes(b"RIFF" + b"\0" * 100)
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "u:p")
    monkeypatch.delenv("ACR_INGEST_DEBUG", raising=False)
    yield monkeypatch
    monkeypatch.undo()
    reset_settings()


def _one_line(result: Result, args: list[str]) -> str:
    assert "Traceback" not in result.output, (args, result.output)
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), (
        args,
        repr(result.exception),
    )
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), (args, result.output)
    return lines[0]


@pytest.mark.parametrize("case", sorted(SETTINGS))
def test_every_command_refuses_a_bad_setting_in_one_line(case: str, env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    values, named = SETTINGS[case]
    # Should a setting be accepted after all, the commands meet an empty database of the test's own (and
    # fail on the first command, before any process would start).
    env.setenv("ACR_INGEST_DATABASE_URL", f"sqlite:///{tmp_path}/settings.db")
    for key, value in values.items():
        env.setenv(key, value)
    reset_settings()
    for args in [*COMMANDS, *REPORTS, *PROCESSES]:
        result = CliRunner().invoke(main, args)
        line = _one_line(result, args)
        assert result.exit_code == 2 and named in line, (args, line)
        assert "s3cret" not in line and "guest:pw" not in line


@pytest.mark.parametrize("case", sorted(DATABASES))
def test_every_command_answers_a_bad_database_in_one_line(
    case: str, env: pytest.MonkeyPatch, tmp_path: Path, emulator: object
) -> None:
    url, code, says = DATABASES[case]
    env.setenv("ACR_INGEST_DATABASE_URL", url.format(tmp=tmp_path))
    reset_settings()
    for args in COMMANDS:
        if case == "unmigrated" and args == ["db", "upgrade"]:
            continue  # the fix itself: it works
        result = CliRunner().invoke(main, args)
        line = _one_line(result, args)
        assert result.exit_code == code and says in line, (args, result.exit_code, line)
        assert "s3cret" not in line
    for args in REPORTS:
        result = CliRunner().invoke(main, args)
        assert "Traceback" not in result.output and result.exit_code in (1, 2), (args, result.output)


def test_debug_keeps_the_traceback(env: pytest.MonkeyPatch) -> None:
    env.setenv("ACR_INGEST_REGION", "mars")
    reset_settings()
    assert CliRunner().invoke(main, ["status"]).exit_code == 2
    with_flag = CliRunner().invoke(main, ["--debug", "status"])
    assert type(with_flag.exception).__name__ == "ValidationError"
    env.setenv("ACR_INGEST_DEBUG", "1")
    assert type(CliRunner().invoke(main, ["status"]).exception).__name__ == "ValidationError"


def test_import_of_a_missing_or_latin1_file_leaves_no_report(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    reset_settings()
    missing = CliRunner().invoke(main, ["import", "missing.csv"])
    assert missing.exit_code == 2 and _one_line(missing, []) == "error: missing.csv: No such file or directory"
    (tmp_path / "latin.csv").write_bytes("ref,title,url\nE-1,Café,https://cdn.example.com/e.mp3\n".encode("latin-1"))
    for args in (["import", "latin.csv"], ["import", "latin.csv", "--status"], ["sync", "latin.csv", "--bucket", "1"]):
        result = CliRunner().invoke(main, args)
        line = _one_line(result, args)
        assert result.exit_code == 2 and "latin.csv is not UTF-8 text (byte 0xe9 on line 2" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog.csv", "latin.csv"]  # no report left behind


def test_a_misspelt_variable_is_named_with_the_setting_it_was_meant_to_be(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env.setenv("ACR_INGEST_POLL_INTERVL", "5")
    env.setenv("ACR_INGEST_TEST_SOMETHING", "1")  # the tests' own, and --debug's: not settings, not warned of
    env.setenv("ACR_INGEST_DEBUG", "0")
    (tmp_path / ".env").write_text("ACR_INGEST_ACESS_TOKEN=abc\nACR_INGEST_REGION=global\nACR_INGEST_ZZZ=1\n")
    reset_settings()
    assert unknown_variables() == [
        "warning: ACR_INGEST_POLL_INTERVL is not an acr-ingest setting and is ignored; did you mean "
        "ACR_INGEST_POLL_INTERVAL?",
        "warning: ACR_INGEST_ACESS_TOKEN is not an acr-ingest setting and is ignored; did you mean "
        "ACR_INGEST_ACCESS_TOKEN?",
        "warning: ACR_INGEST_ZZZ is not an acr-ingest setting and is ignored (`acr-ingest config` lists the settings)",
    ]
    result = CliRunner().invoke(main, ["config"])
    assert result.exit_code == 0, result.output
    assert "ACR_INGEST_POLL_INTERVL is not an acr-ingest setting" in result.output
    assert "did you mean ACR_INGEST_ACCESS_TOKEN?" in result.output


def test_every_variable_the_project_documents_is_a_setting_or_known() -> None:
    """``.env.example`` names every setting: none of its names may be warned of."""
    example = Path(__file__).resolve().parents[2] / ".env.example"
    names = {
        line.lstrip("# ").split("=", 1)[0]
        for line in example.read_text().splitlines()
        if line.lstrip("# ").startswith("ACR_INGEST_") and "=" in line
    }
    assert len(names) > 20
    assert unknown_variables(dict.fromkeys(names, "x"), env_file=None) == []
