"""Settings: defaults, the validation table, and the command line's handling of bad input."""
from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import responses

import market_maker as mm
from tests.sim_process import clean_env

REPO = Path(__file__).resolve().parent.parent
KEY_HEX = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
KEY = "0x" + KEY_HEX


def test_defaults_match_the_original():
    config = mm.load_config({"WALLET_PRIVATE_KEY": KEY})
    assert (config.symbol, config.qty) == ("BTC-USD", Decimal("0.005"))
    assert config.band == mm.Band(Decimal("7.5"), Decimal("7.0"), Decimal("10"))
    assert (config.balance_threshold_1, config.balance_threshold_2) == (Decimal(100), Decimal(50))
    assert config.check_interval_s == 0.5
    assert (config.time_in_force, config.requote_mode) == ("alo", "replace")
    assert config.auth_base_url == "https://api.standx.com"
    assert config.perps_base_url == "https://perps.standx.com"


def test_the_streams_are_the_default_feed_on_the_perps_host():
    config = mm.load_config({"WALLET_PRIVATE_KEY": KEY})
    assert config.price_feed == "ws"
    assert config.ws_stream_url == "wss://perps.standx.com/ws-stream/v1"
    assert config.ws_api_url == "wss://perps.standx.com/ws-api/v1"


def test_stream_urls_follow_the_perps_url_unless_set():
    config = mm.load_config({"WALLET_PRIVATE_KEY": KEY, "STANDX_PERPS_BASE_URL": "http://127.0.0.1:8000"})
    assert (config.ws_stream_url, config.ws_api_url) == ("ws://127.0.0.1:8000/ws-stream/v1",
                                                         "ws://127.0.0.1:8000/ws-api/v1")
    config = mm.load_config({"WALLET_PRIVATE_KEY": KEY, "STANDX_WS_STREAM_URL": "wss://proxy/stream",
                             "STANDX_WS_API_URL": "wss://proxy/api", "MARKET_MAKER_PRICE_FEED": "REST"})
    assert (config.ws_stream_url, config.ws_api_url, config.price_feed) == ("wss://proxy/stream", "wss://proxy/api", "rest")


@pytest.mark.parametrize("raw", [KEY, KEY_HEX, f"  {KEY}\n", KEY.upper().replace("0X", "0x"), f"{KEY_HEX}\r\n"])
def test_private_key_with_or_without_0x_and_whitespace_is_accepted(raw):
    assert mm.load_config({"WALLET_PRIVATE_KEY": raw}).private_key == KEY


INVALID = [
    ({"WALLET_PRIVATE_KEY": ""}, "WALLET_PRIVATE_KEY"),
    ({"WALLET_PRIVATE_KEY": "0x1234"}, "WALLET_PRIVATE_KEY"),
    ({"WALLET_PRIVATE_KEY": "zz" * 32}, "WALLET_PRIVATE_KEY"),
    ({"MARKET_MAKER_SYMBOL": "BTC/USD"}, "MARKET_MAKER_SYMBOL"),
    ({"MARKET_MAKER_QTY": "abc"}, "MARKET_MAKER_QTY"),
    ({"MARKET_MAKER_QTY": "-0.005"}, "MARKET_MAKER_QTY"),
    ({"MARKET_MAKER_QTY": "0"}, "MARKET_MAKER_QTY"),
    ({"MARKET_MAKER_QTY": "NaN"}, "MARKET_MAKER_QTY"),
    ({"MARKET_MAKER_TARGET_BPS": "ten"}, "MARKET_MAKER_TARGET_BPS"),
    ({"MARKET_MAKER_MIN_BPS": "0"}, "MARKET_MAKER_MIN_BPS"),
    ({"MARKET_MAKER_MIN_BPS": "-1"}, "MARKET_MAKER_MIN_BPS"),
    ({"MARKET_MAKER_MIN_BPS": "8"}, "MARKET_MAKER_TARGET_BPS"),  # min > target
    ({"MARKET_MAKER_MAX_BPS": "7"}, "MARKET_MAKER_MAX_BPS"),  # max < target
    ({"MARKET_MAKER_MAX_BPS": "inf"}, "MARKET_MAKER_MAX_BPS"),
    ({"MARKET_MAKER_BALANCE_THRESHOLD_1": "x"}, "MARKET_MAKER_BALANCE_THRESHOLD_1"),
    ({"MARKET_MAKER_BALANCE_THRESHOLD_2": "150"}, "MARKET_MAKER_BALANCE_THRESHOLD_2"),
    ({"MARKET_MAKER_BALANCE_THRESHOLD_2": "-1"}, "MARKET_MAKER_BALANCE_THRESHOLD_2"),
    ({"MARKET_MAKER_BALANCE_EXIT": "-5"}, "MARKET_MAKER_BALANCE_EXIT"),
    ({"MARKET_MAKER_BALANCE_EXIT": "ten"}, "MARKET_MAKER_BALANCE_EXIT"),
    ({"MARKET_MAKER_CHECK_INTERVAL": "0"}, "MARKET_MAKER_CHECK_INTERVAL"),
    ({"MARKET_MAKER_CHECK_INTERVAL": "fast"}, "MARKET_MAKER_CHECK_INTERVAL"),
    ({"MARKET_MAKER_CHECK_INTERVAL": "3600"}, "MARKET_MAKER_CHECK_INTERVAL"),
    ({"MARKET_MAKER_TIME_IN_FORCE": "ioc"}, "MARKET_MAKER_TIME_IN_FORCE"),
    ({"MARKET_MAKER_TIME_IN_FORCE": "post"}, "MARKET_MAKER_TIME_IN_FORCE"),
    ({"MARKET_MAKER_REQUOTE": "sometimes"}, "MARKET_MAKER_REQUOTE"),
    ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
    ({"STANDX_AUTH_BASE_URL": "api.standx.com"}, "STANDX_AUTH_BASE_URL"),
    ({"STANDX_PERPS_BASE_URL": "ftp://perps"}, "STANDX_PERPS_BASE_URL"),
    ({"STANDX_PERPS_BASE_URL": "https://perps.standx.com?x=1"}, "STANDX_PERPS_BASE_URL"),
    ({"MARKET_MAKER_PRICE_FEED": "websocket"}, "MARKET_MAKER_PRICE_FEED"),
    ({"STANDX_WS_STREAM_URL": "https://perps.standx.com/ws-stream/v1"}, "STANDX_WS_STREAM_URL"),
    ({"STANDX_WS_API_URL": "wss://"}, "STANDX_WS_API_URL"),
]


@pytest.mark.parametrize("settings, variable", INVALID)
def test_invalid_setting_names_its_variable(settings, variable):
    env = {"WALLET_PRIVATE_KEY": KEY, **settings}
    with pytest.raises(mm.ConfigError) as caught:
        mm.load_config(env)
    assert caught.value.variable == variable
    assert str(caught.value).startswith(variable)


def test_malformed_private_key_is_never_echoed():
    secret = "ab" * 31 + "zz"
    with pytest.raises(mm.ConfigError) as caught:
        mm.load_config({"WALLET_PRIVATE_KEY": secret})
    assert secret not in str(caught.value) and "ab" * 8 not in str(caught.value)


def test_config_repr_hides_the_private_key():
    config = mm.load_config({"WALLET_PRIVATE_KEY": KEY})
    assert KEY_HEX not in repr(config)


def test_balance_exit_floor_is_off_unless_set():
    assert mm.load_config({"WALLET_PRIVATE_KEY": KEY}).balance_exit is None
    config = mm.load_config({"WALLET_PRIVATE_KEY": KEY, "MARKET_MAKER_BALANCE_EXIT": "25"})
    assert config.balance_exit == Decimal(25)


def test_equal_min_target_max_is_allowed():
    config = mm.load_config({"WALLET_PRIVATE_KEY": KEY, "MARKET_MAKER_TARGET_BPS": "8",
                             "MARKET_MAKER_MIN_BPS": "8", "MARKET_MAKER_MAX_BPS": "8"})
    assert config.band == mm.Band(Decimal(8), Decimal(8), Decimal(8))


def run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "market_maker.py"), *args],
                          cwd=tmp_path, env=clean_env(**env), capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("settings, variable", INVALID[:1] + INVALID[4:5] + INVALID[12:13])
def test_cli_bad_setting_exits_2_with_one_line_and_no_traceback(tmp_path, settings, variable):
    env = {"WALLET_PRIVATE_KEY": KEY, **settings}
    result = run_cli(tmp_path, **env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("settings, variable", INVALID)
def test_every_bad_setting_exits_2_with_one_line_and_sends_no_request(monkeypatch, capsys, settings, variable):
    for name in list(os.environ):
        if name.startswith(("MARKET_MAKER_", "STANDX_", "WALLET_", "LOG_LEVEL")):
            monkeypatch.delenv(name)
    for name, value in {"WALLET_PRIVATE_KEY": KEY, **settings}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(REPO / "tests")  # no .env here
    monkeypatch.setattr(mm, "setup_logging", lambda level: None)  # keep pytest's log capture
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        assert mm.main([]) == mm.EXIT_CONFIG
        assert len(mock.calls) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"configuration error: {variable}")
    assert KEY_HEX not in err[0]


def test_cli_check_config_reads_the_env_file_and_prints_no_secret(tmp_path):
    env_file = tmp_path / "account.env"
    env_file.write_text(f"WALLET_PRIVATE_KEY={KEY}\nMARKET_MAKER_QTY=0.01\n")
    env_file.chmod(0o600)
    result = run_cli(tmp_path, "--env-file", str(env_file), "--check-config")
    assert result.returncode == 0, result.stderr
    assert "qty=0.01" in result.stdout
    assert KEY_HEX not in result.stdout + result.stderr


def test_environment_wins_over_the_env_file(tmp_path):
    (tmp_path / ".env").write_text(f"WALLET_PRIVATE_KEY={KEY}\nMARKET_MAKER_QTY=0.01\n")
    result = run_cli(tmp_path, "--check-config", MARKET_MAKER_QTY="0.02")
    assert result.returncode == 0, result.stderr
    assert "qty=0.02" in result.stdout


def test_environment_alone_is_enough(tmp_path):
    result = run_cli(tmp_path, "--check-config", WALLET_PRIVATE_KEY=KEY)
    assert result.returncode == 0, result.stderr


def test_missing_env_file_is_a_one_line_error(tmp_path):
    result = run_cli(tmp_path, "--env-file", "nope.env", "--check-config")
    assert result.returncode == 2
    assert result.stderr.strip() == "configuration error: --env-file: no such file: nope.env"


def test_env_file_readable_by_others_is_warned_about(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text(f"WALLET_PRIVATE_KEY={KEY}\n")
    env_file.chmod(0o644)
    result = run_cli(tmp_path, "--check-config")
    assert "chmod 600" in result.stdout and ".env" in result.stdout
    env_file.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert "chmod 600" not in run_cli(tmp_path, "--check-config").stdout


@pytest.mark.parametrize("kind, text", [(Decimal, "abc"), (Decimal, "NaN"), (float, "inf"), (int, "1.5"),
                                        (float, "-1")])
def test_a_bad_numeric_option_is_a_usage_error_not_a_traceback(kind, text):
    with pytest.raises(argparse.ArgumentTypeError):
        mm.number_argument(kind)(text)


def test_a_numeric_option_can_exclude_its_minimum():
    assert mm.number_argument(float)("0") == 0
    with pytest.raises(argparse.ArgumentTypeError, match="greater than 0"):
        mm.number_argument(float, inclusive=False)("0")


def test_the_simulator_cli_rejects_a_non_number_in_one_line():
    result = subprocess.run([sys.executable, "-m", "standx_sim", "serve", "--meter-qty", "abc"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith("argument --meter-qty: not a number: 'abc'")
    assert "Traceback" not in result.stderr


# ---- settings are never silently wrong ------------------------------------------------------------

MISNAMED = [
    ("MARKET_MAKER_QTYY", "MARKET_MAKER_QTY"),
    ("market_maker_qty", "MARKET_MAKER_QTY"),
    ("MARKET_MAKER_TARGET", "MARKET_MAKER_TARGET_BPS"),
    ("STANDX_PERPS_URL", "STANDX_PERPS_BASE_URL"),
    ("WALLET_PRIVATEKEY", "WALLET_PRIVATE_KEY"),
    ("Alert_Webhook_Url", "ALERT_WEBHOOK_URL"),
]


@pytest.mark.parametrize("name, closest", MISNAMED)
def test_an_unknown_setting_name_is_refused_with_the_closest_known_one(name, closest):
    with pytest.raises(mm.ConfigError) as caught:
        mm.load_config({"WALLET_PRIVATE_KEY": KEY, name: "0.01"})
    assert str(caught.value) == f"{name}: is not a setting of this daemon; did you mean {closest}?"


def test_a_name_outside_our_prefixes_is_left_alone():
    # Other programs' variables (LOG_FORMAT, LOG_DIR ...) share the environment: not ours to judge.
    env = {"WALLET_PRIVATE_KEY": KEY, "PATH": "/usr/bin", "QTY": "1", "LOG_FORMAT": "json"}
    assert mm.load_config(env).qty == Decimal("0.005")


def check_env_file(tmp_path: Path, content: bytes) -> tuple[Path, subprocess.CompletedProcess]:
    """`--check-config` on an env file (owner-readable only) holding `content`."""
    env_file = tmp_path / "account.env"
    env_file.write_bytes(content)
    env_file.chmod(0o600)
    return env_file, run_cli(tmp_path, "--env-file", str(env_file), "--check-config")


def test_cli_typo_in_the_env_file_exits_2_before_any_request(tmp_path):
    _, result = check_env_file(tmp_path, f"WALLET_PRIVATE_KEY={KEY}\nMARKET_MAKER_QTYY=0.01\n".encode())
    assert result.returncode == 2
    assert result.stderr.strip() == ("configuration error: MARKET_MAKER_QTYY: is not a setting of this "
                                     "daemon; did you mean MARKET_MAKER_QTY?")
    assert "configuration OK" not in result.stdout


def test_an_env_file_line_that_cannot_be_parsed_names_the_file_and_line(tmp_path):
    env_file, result = check_env_file(
        tmp_path, f"WALLET_PRIVATE_KEY={KEY}\n# the size\nMARKET_MAKER_QTY=\"0.01\nLOG_LEVEL=INFO\n".encode())
    assert result.returncode == 2
    assert result.stderr.strip() == (f"configuration error: {env_file}, line 3: cannot be parsed "
                                     "(an unbalanced quote?)")
    assert KEY_HEX not in result.stderr


def test_an_env_file_saved_with_a_byte_order_mark_keeps_its_first_setting(tmp_path):
    _, result = check_env_file(
        tmp_path, b"\xef\xbb\xbf" + f"WALLET_PRIVATE_KEY={KEY}\nMARKET_MAKER_QTY=0.01\n".encode())
    assert result.returncode == 0, result.stderr
    assert "qty=0.01" in result.stdout


def test_check_config_names_the_wallet_and_the_endpoints_never_the_key(tmp_path):
    result = run_cli(tmp_path, "--check-config", WALLET_PRIVATE_KEY=KEY,
                     STANDX_PERPS_BASE_URL="http://127.0.0.1:9")
    assert result.returncode == 0, result.stderr
    assert ("wallet 0x2c7536E3605D9C16a7a3D7b1898e529396a65c23, auth https://api.standx.com, "
            "perps http://127.0.0.1:9") in result.stdout
    assert "streams ws://127.0.0.1:9/ws-stream/v1, ws://127.0.0.1:9/ws-api/v1" in result.stdout
    assert KEY_HEX not in result.stdout + result.stderr


@pytest.mark.parametrize("other", [["--simulate"], ["--check-config"], ["--log-file", "x.log"]])
def test_status_with_another_mode_is_refused_in_one_line(tmp_path, other):
    result = run_cli(tmp_path, "--status", *other, WALLET_PRIVATE_KEY=KEY)
    assert result.returncode == 2
    assert result.stderr.strip() == ("usage error: --status only reads the account: it cannot be "
                                     f"combined with {other[0]}")


def test_output_into_a_pipe_that_closes_early_prints_no_traceback(tmp_path):
    command = f"{sys.executable} {REPO / 'market_maker.py'} --check-config | true"
    for _ in range(3):  # `true` has gone before the daemon (slower to start) writes
        result = subprocess.run(command, shell=True, cwd=tmp_path, env=clean_env(WALLET_PRIVATE_KEY=KEY),
                                capture_output=True, text=True, timeout=60)
        assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


@pytest.mark.parametrize("path", ["no/such/dir/x.log", "."])
def test_a_log_file_that_cannot_be_written_is_one_line_exit_2(tmp_path, path):
    result = run_cli(tmp_path, "--log-file", path, WALLET_PRIVATE_KEY=KEY)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"configuration error: --log-file: cannot write {path} (")
    assert "Traceback" not in result.stderr + result.stdout
