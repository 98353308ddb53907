"""Settings: defaults, parsing, config.env loading, and refusals that name the variable."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from plangate.server.config import Config, ConfigError

ROOT = Path(__file__).resolve().parents[2]


class TestConfig:
    def test_defaults(self):
        c = Config.from_env({})
        assert (c.enabled, c.kill_switch, c.host, c.port, c.fail_mode) == (False, False, "127.0.0.1", 8080, "plan")
        assert c.plans == "plans.yaml" and c.database.endswith(".sqlite3")

    @pytest.mark.parametrize("raw, value", [("true", True), ("1", True), ("YES", True), ("off", False), ("0", False)])
    def test_booleans(self, raw, value):
        assert Config.from_env({"SUBSCRIPTION_ENABLED": raw}).enabled is value

    @pytest.mark.parametrize("name, value", [
        ("PLANGATE_PORT", "-1"), ("PLANGATE_CACHE_SIZE", "0"), ("PLANGATE_STORE_TIMEOUT", "soon"),
        ("SUBSCRIPTION_KILL_SWITCH", "perhaps"), ("PLANGATE_LOG_LEVEL", "LOUD"), ("PLANGATE_MAX_AMOUNT", "1.5"),
        ("PLANGATE_MAX_AMOUNT", str(10**15 + 1)),
        ("PLANGATE_IDLE_TIMEOUT", "0"), ("PLANGATE_PG_REPLICAS", "mysql://replica:3306/db"),
        ("PLANGATE_PG_REPLICA_MAX_LAG", "0"), ("PLANGATE_EVENT_PAYLOAD_RETENTION_DAYS", "-1"),
        ("PLANGATE_EVENT_PAYLOAD_RETENTION_DAYS", "3.5"),
    ])
    def test_invalid_values_name_variable_value_and_what_is_allowed(self, name, value):
        with pytest.raises(ConfigError) as err:
            Config.from_env({name: value})
        message = str(err.value)
        assert name in message and repr(value) in message and ("allowed" in message or "needed" in message)

    def test_replicas_need_a_postgresql_database_and_keep_their_passwords_out_of_sight(self):
        replica = "postgresql://gate:s3cret@replica-1:5432/plangate"
        with pytest.raises(ConfigError, match="PLANGATE_PG_REPLICAS.*PostgreSQL"):
            Config.from_env({"PLANGATE_PG_REPLICAS": replica})
        c = Config.from_env({"PLANGATE_DATABASE": "postgresql://gate@primary/plangate",
                             "PLANGATE_PG_REPLICAS": f" {replica} , {replica.replace('-1', '-2')}"})
        assert c.replicas == (replica, replica.replace("-1", "-2")) and c.replica_max_lag == 1.0
        assert "s3cret" not in repr(c) and c.store_options()["replicas"] == c.replicas

    @pytest.mark.parametrize("address", ["postgressql://gate:s3cret@db:5432/plangate", "mysql://gate@db/plangate",
                                         "postgresql+asyncpg://gate:s3cret@db/plangate"])
    def test_an_address_of_no_store_the_gate_knows_is_refused_not_taken_for_a_file(self, address):
        """A typo in the scheme made a SQLite file named after the address: a node counting alone."""
        with pytest.raises(ConfigError, match="PLANGATE_DATABASE.*names no store") as err:
            Config.from_env({"PLANGATE_DATABASE": address})
        assert "s3cret" not in str(err.value)
        for fine in ("var/gate.sqlite3", "sqlite:///var/gate.sqlite3", "postgres://gate@db/plangate"):
            assert Config.from_env({"PLANGATE_DATABASE": fine}).database == fine

    def test_a_pool_whose_least_is_above_its_most_is_refused(self):
        with pytest.raises(ConfigError, match="PLANGATE_PG_POOL_MIN=20 is more than PLANGATE_PG_POOL_MAX=10"):
            Config.from_env({"PLANGATE_PG_POOL_MIN": "20"})

    def test_token_is_required_to_serve_and_never_shown(self):
        with pytest.raises(ConfigError) as err:
            Config.from_env({"PLANGATE_API_TOKEN": "abc"}).require_token()
        assert "abc" not in str(err.value)
        assert "0123456789abcdef0" not in repr(Config.from_env({"PLANGATE_API_TOKEN": "0123456789abcdef0"}))

    def test_tokens_by_scope_several_each_while_rotating(self):
        c = Config.from_env({"PLANGATE_API_TOKEN": " api-token-0123456789a, api-token-0123456789b ",
                             "PLANGATE_ADMIN_TOKEN": "admin-token-0123456789"})
        assert c.api_tokens == ("api-token-0123456789a", "api-token-0123456789b")
        assert c.admin_tokens == ("admin-token-0123456789",)
        c.require_token()
        assert "0123456789" not in repr(c)

    @pytest.mark.parametrize("name", ["PLANGATE_API_TOKEN", "PLANGATE_ADMIN_TOKEN"])
    @pytest.mark.parametrize("value", ["short-one", "with a space 0123456789", "caf\u00e9-0123456789abcdef",
                                       "good-token-0123456789,short"])
    def test_an_unusable_token_is_refused_and_never_shown(self, name, value):
        with pytest.raises(ConfigError) as err:
            Config.from_env({name: value})
        assert name in str(err.value) and value not in str(err.value) and "short" not in str(err.value)

    def test_the_admin_token_is_a_secret_of_its_own(self):
        same = "the-same-token-0123456789"
        with pytest.raises(ConfigError) as err:
            Config.from_env({"PLANGATE_API_TOKEN": same, "PLANGATE_ADMIN_TOKEN": same}).require_token()
        assert "PLANGATE_ADMIN_TOKEN" in str(err.value) and same not in str(err.value)

    def test_a_short_pseudonym_secret_is_refused_and_never_shown(self):
        with pytest.raises(ConfigError) as err:
            Config.from_env({"PLANGATE_PSEUDONYM_SECRET": "short-one"})
        assert "PLANGATE_PSEUDONYM_SECRET" in str(err.value) and "short-one" not in str(err.value)
        secret = "a-pseudonym-secret-0123456789"
        assert secret not in repr(Config.from_env({"PLANGATE_PSEUDONYM_SECRET": secret}))

    def test_config_env_file_fills_in_but_environment_wins(self, tmp_path, monkeypatch):
        env_file = tmp_path / "config.env"
        env_file.write_text("PLANGATE_PORT=9191\nPLANGATE_CACHE_SIZE=77\n")
        monkeypatch.setenv("PLANGATE_CACHE_SIZE", "55")
        monkeypatch.delenv("PLANGATE_PORT", raising=False)
        try:
            c = Config.from_env(env_file=str(env_file))
        finally:
            os.environ.pop("PLANGATE_PORT", None)     # load_dotenv put it into the process environment
        assert (c.port, c.cache_size) == (9191, 55)

    def test_every_variable_is_documented_in_the_example(self):
        source = (ROOT / "server" / "config.py").read_text()
        used = set(re.findall(r'"((?:PLANGATE|SUBSCRIPTION|STRIPE)_[A-Z_]+)"', source))
        example = (ROOT / "config.env.example").read_text()
        documented = set(re.findall(r"^#?\s*((?:PLANGATE|SUBSCRIPTION|STRIPE)_[A-Z_]+)=", example, re.M))
        assert used and used <= documented, sorted(used - documented)


class TestAddressesShown:
    """One rule masks every PostgreSQL address the gate holds, the primary's and its replicas'."""

    PRIMARY = "postgresql://gate:primary-pw-1@db1:5432/plangate"
    REPLICAS = "postgresql://reader:replica-pw-2@db2:5432/plangate,postgres://reader:replica-pw-3@db3/plangate"

    def config(self, **env):
        return Config.from_env({"PLANGATE_DATABASE": self.PRIMARY, "PLANGATE_PG_REPLICAS": self.REPLICAS, **env})

    def test_an_error_quoting_a_replica_is_shown_without_its_password(self):
        c = self.config()
        shown = c.database_shown(f"the store failed: cannot reach {c.replicas[0]} nor {c.replicas[1]} "
                                 f"(PLANGATE_DATABASE={c.database}, PLANGATE_PG_REPLICAS={','.join(c.replicas)})")
        for password in ("primary-pw-1", "replica-pw-2", "replica-pw-3"):
            assert password not in shown
        assert "postgresql://reader:***@db2:5432/plangate" in shown and "gate:***@db1" in shown

    def test_a_password_given_as_a_parameter_is_masked_too(self):
        c = self.config(PLANGATE_DATABASE="postgresql://gate@db1/plangate?sslmode=require&password=param-pw-4",
                        PLANGATE_PG_REPLICAS="postgresql://db2/plangate?password=param-pw-5")
        shown = c.database_shown(f"{c.database} {c.replicas[0]}")
        assert "param-pw-4" not in shown and "param-pw-5" not in shown and "password=***" in shown

    def test_plan_impact_shows_an_address_by_the_same_rule(self):
        from plangate.server.config import shown_address
        assert shown_address(self.PRIMARY) == "postgresql://gate:***@db1:5432/plangate"
        assert shown_address("var/plangate.sqlite3") == "var/plangate.sqlite3"
