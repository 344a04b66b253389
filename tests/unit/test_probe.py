"""``acr-ingest probe`` against the emulator: under each profile it names that profile, and cleans up."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ingest.cli.commands import main
from ingest.devtools.emulator.profiles import PROFILES
from tests.conftest import TOKEN

# The traits the strict profile combines, as the probe names them.
STRICT = [
    "upload-no-ids",
    "audio-id-ignored",
    "batch-404-any",
    "body-count",
    "user-defined-string",
    "fingerprint-unchecked",
]


@pytest.mark.parametrize("profile", list(PROFILES), indirect=True)
def test_the_probe_names_the_profile_and_leaves_nothing(api, bucket, tmp_path, monkeypatch) -> None:
    report_path = tmp_path / "probe.json"
    monkeypatch.setenv("ACR_INGEST_API_BASE_URL", api.emu.url)
    monkeypatch.setenv("ACR_INGEST_PROBE_REPORT", str(report_path))
    monkeypatch.setenv("ACR_INGEST_ACCESS_TOKEN", TOKEN)
    from ingest.settings import get_settings

    get_settings.cache_clear()
    try:
        out = CliRunner().invoke(main, ["probe", "--bucket", str(bucket), "--wait", "10", "--yes"])
        shown = CliRunner().invoke(main, ["probe", "--show"])
        config = CliRunner().invoke(main, ["config"])
        config_json = CliRunner().invoke(main, ["config", "--json"])
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()

    assert out.exit_code == 0, out.output
    report = json.loads(report_path.read_text())
    expected = STRICT if api.profile == "strict" else [api.profile]
    assert report["matches"] == expected
    assert api.emu.files(bucket) == [] and report["left_behind"] == []
    assert report["assumptions"]["update_accepts_string"]["confirmed"] is True
    assert report["assumptions"]["list_search_matches_title"]["confirmed"] is True
    assert shown.exit_code == 0 and f"matches emulator profile(s): {', '.join(expected)}" in shown.output

    # `acr-ingest config` shows which assumptions the saved report confirmed (and which it refuted).
    assert config.exit_code == 0 and f"matches emulator profile(s): {', '.join(expected)}" in config.output
    marks = {True: "confirmed", False: "REFUTED", None: "not observed"}
    section = config.output.split("\n\napi assumptions", 1)[1]
    for name, a in report["assumptions"].items():
        assert f"  {marks[a['confirmed']]:<12} {name}\n" in section, name
    assumptions = json.loads(config_json.output)["(api assumptions)"]
    assert assumptions["assumptions"] == {n: a["confirmed"] for n, a in report["assumptions"].items()}
    assert assumptions["matches"] == expected
    if api.profile == "strict":
        assert assumptions["assumptions"]["audio_id_kept"] is False  # refuted, and shown as such


def test_config_says_when_no_probe_report_was_saved(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ACR_INGEST_PROBE_REPORT", str(tmp_path / "none.json"))
    from ingest.settings import get_settings

    get_settings.cache_clear()
    try:
        out = CliRunner().invoke(main, ["config"])
        (tmp_path / "bad.json").write_text("{not json")
        monkeypatch.setenv("ACR_INGEST_PROBE_REPORT", str(tmp_path / "bad.json"))
        get_settings.cache_clear()
        bad = CliRunner().invoke(main, ["config"])
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert out.exit_code == 0 and "api assumptions: no probe report: run `acr-ingest probe --bucket ID`" in out.output
    assert bad.exit_code == 0 and "cannot be read" in bad.output
