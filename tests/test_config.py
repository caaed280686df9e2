"""Settings: precedence, .env parsing, secrets, TLS rules, clouds and endpoint overrides."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from esj_provision.config import Settings, load_settings, read_dotenv
from esj_provision.errors import ConfigError, UsageError

TENANT_GUID = "0550b473-9fd2-4dbb-a058-a1640b4bf458"
CLIENT = "11111111-2222-3333-4444-555555555555"
SECRET = "s3cr3t-VALUE-never-printed"
NO_DOTENV = Path("/nonexistent/.env")


def base_env(**extra: str) -> dict[str, str]:
    return {"AZURE_TENANT_ID": TENANT_GUID, "AZURE_CLIENT_ID": CLIENT, "AZURE_CLIENT_SECRET": SECRET, **extra}


def load(environ: dict[str, str], dotenv: Path = NO_DOTENV, **flags: str | None) -> Settings:
    return load_settings(environ=environ, dotenv_path=dotenv, **flags)  # type: ignore[arg-type]


# -- precedence -------------------------------------------------------------------------------


def test_flag_beats_env_beats_dotenv(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "AZURE_TENANT_ID=dotenv.onmicrosoft.com\nESJ_PROVISION_CLOUD=china\nAZURE_CLIENT_SECRET=from-dotenv\n"
    )
    env = {"AZURE_TENANT_ID": "env.onmicrosoft.com", "ESJ_PROVISION_CLOUD": "usgov-high"}

    flagged = load(env, dotenv, tenant_id="flag.onmicrosoft.com", cloud="usgov-dod")
    assert flagged.tenant_id == "flag.onmicrosoft.com" and flagged.cloud.name == "usgov-dod"

    from_env = load(env, dotenv)
    assert from_env.tenant_id == "env.onmicrosoft.com" and from_env.cloud.name == "usgov-high"

    from_dotenv = load({}, dotenv)
    assert from_dotenv.tenant_id == "dotenv.onmicrosoft.com" and from_dotenv.cloud.name == "china"
    assert from_dotenv.client_secret == "from-dotenv"


def test_empty_values_do_not_override(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("AZURE_TENANT_ID=dotenv.onmicrosoft.com\n")
    s = load({"AZURE_TENANT_ID": ""}, dotenv, tenant_id="")
    assert s.tenant_id == "dotenv.onmicrosoft.com"


# -- .env parsing -----------------------------------------------------------------------------


def test_dotenv_parsing(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text(
        "# a comment\n"
        "\n"
        "export AZURE_TENANT_ID=contoso.onmicrosoft.com\n"
        'AZURE_CLIENT_SECRET="quoted # not a comment"\n'
        "ESJ_PROVISION_CLOUD='global'\n"
        "ESJ_PROVISION_AUTH=secret # trailing comment\n"
        "  SPACED_KEY =  spaced value  \n"
        "EMPTY=\n"
        "WITH_EQUALS=a=b=c\n"
    )
    assert read_dotenv(path) == {
        "AZURE_TENANT_ID": "contoso.onmicrosoft.com",
        "AZURE_CLIENT_SECRET": "quoted # not a comment",
        "ESJ_PROVISION_CLOUD": "global",
        "ESJ_PROVISION_AUTH": "secret",
        "SPACED_KEY": "spaced value",
        "EMPTY": "",
        "WITH_EQUALS": "a=b=c",
    }


@pytest.mark.parametrize(("text", "line"), [("GOOD=1\nthis is not an assignment\n", 2), ("OK=1\n\n# c\nBAD KEY=1\n", 4)])
def test_dotenv_bad_line_names_the_line(tmp_path: Path, text: str, line: int) -> None:
    path = tmp_path / ".env"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"line {line}\b") as info:
        read_dotenv(path)
    assert info.value.hint


def test_dotenv_reads_what_other_tools_write(tmp_path: Path) -> None:
    """python-dotenv's syntax: escapes in double quotes, multi-line quoted values, literal single quotes."""
    path = tmp_path / ".env"
    path.write_text(
        'MULTI="-----BEGIN KEY-----\nabc\n-----END KEY-----"\n'
        'ESCAPED="tab\\there \\"quoted\\""\n'
        "LITERAL='a\\nb $HOME ${HOME}'\n"
        "export NAKED=plain\n"
        "DOLLAR=pa$$word${NOT_EXPANDED}\n"
    )
    assert read_dotenv(path) == {
        "MULTI": "-----BEGIN KEY-----\nabc\n-----END KEY-----",
        "ESCAPED": 'tab\there "quoted"',
        "LITERAL": "a\\nb $HOME ${HOME}",
        "NAKED": "plain",
        "DOLLAR": "pa$$word${NOT_EXPANDED}",  # a secret is taken literally
    }


def test_missing_dotenv_is_fine() -> None:
    assert read_dotenv(NO_DOTENV) == {}


def test_unreadable_dotenv_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_bytes(b"KEY=\xff\xfe\n")
    with pytest.raises(ConfigError, match="cannot read"):
        read_dotenv(path)


# -- secrets ----------------------------------------------------------------------------------


def test_no_secret_flag_exists() -> None:
    params = inspect.signature(load_settings).parameters
    assert not [p for p in params if "secret" in p and p != "client_secret_file"]


def test_secret_from_env_dotenv_or_file(tmp_path: Path) -> None:
    assert load(base_env()).client_secret == SECRET

    dotenv = tmp_path / ".env"
    dotenv.write_text(f"AZURE_CLIENT_SECRET={SECRET}-dotenv\n")
    assert load({"AZURE_TENANT_ID": TENANT_GUID}, dotenv).client_secret == f"{SECRET}-dotenv"

    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(f"  {SECRET}-file\n")
    assert load(base_env(), client_secret_file=str(secret_file)).client_secret == f"{SECRET}-file"
    via_env = load(base_env(ESJ_PROVISION_CLIENT_SECRET_FILE=str(secret_file)))
    assert via_env.client_secret == f"{SECRET}-file"


def test_secret_file_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the client secret file"):
        load(base_env(), client_secret_file=str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        load(base_env(), client_secret_file=str(empty))


def test_repr_never_contains_secrets(tmp_path: Path) -> None:
    cert = tmp_path / "app.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    s = load(base_env(AZURE_CLIENT_CERTIFICATE_PASSWORD="pfx-PASSWORD-xyz"), certificate_path=str(cert))
    text = repr(s) + str(s)
    assert SECRET not in text and "pfx-PASSWORD-xyz" not in text
    assert set(s.secrets) == {SECRET, "pfx-PASSWORD-xyz"}


# -- TLS and endpoints ------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://graph.example.com", "http://10.0.0.5:8080", "ftp://graph.example.com", "graph"])
def test_plain_http_or_non_url_refused(url: str) -> None:
    with pytest.raises(UsageError):
        load(base_env(), graph_endpoint=url)
    with pytest.raises(UsageError):
        load(base_env(ESJ_PROVISION_EXCHANGE_ENDPOINT=url))


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/", "http://localhost:9000", "http://[::1]:8443", "https://sandbox.test"])
def test_loopback_http_and_any_https_accepted(url: str) -> None:
    s = load(base_env(), graph_endpoint=url, exchange_endpoint=url)
    assert s.graph_endpoint == url.rstrip("/") and s.exchange_endpoint == url.rstrip("/")


def test_authority_must_be_https_even_on_loopback() -> None:
    with pytest.raises(UsageError, match="https"):
        load(base_env(AZURE_AUTHORITY_HOST="http://127.0.0.1:8443"))
    assert load(base_env(AZURE_AUTHORITY_HOST="https://127.0.0.1:8443/")).authority_host == "https://127.0.0.1:8443"


def test_endpoint_overrides_keep_the_clouds_token_scopes() -> None:
    s = load(base_env(ESJ_PROVISION_GRAPH_ENDPOINT="https://graph.sandbox.test"), exchange_endpoint="https://exo.sandbox.test/")
    assert s.graph_endpoint == "https://graph.sandbox.test"
    assert s.exchange_endpoint == "https://exo.sandbox.test"
    assert s.cloud.graph_scope == "https://graph.microsoft.com/.default"
    assert s.cloud.exchange_scope == "https://outlook.office365.com/.default"


def test_ca_bundle_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CA bundle"):
        load(base_env(ESJ_PROVISION_CA_BUNDLE=str(tmp_path / "nope.pem")))
    bundle = tmp_path / "ca.pem"
    bundle.write_text("x")
    assert load(base_env(), ca_bundle=str(bundle)).ca_bundle == str(bundle)


# -- clouds and sign-in kinds -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("cloud", "authority", "graph", "exchange"),
    [
        ("global", "https://login.microsoftonline.com", "https://graph.microsoft.com", "https://outlook.office365.com"),
        ("usgov-high", "https://login.microsoftonline.us", "https://graph.microsoft.us", "https://outlook.office365.us"),
        ("usgov-dod", "https://login.microsoftonline.us", "https://dod-graph.microsoft.us", "https://outlook-dod.office365.us"),
        ("china", "https://login.chinacloudapi.cn", "https://microsoftgraph.chinacloudapi.cn", "https://partner.outlook.cn"),
    ],
)
def test_cloud_selects_hosts_and_scopes(cloud: str, authority: str, graph: str, exchange: str) -> None:
    s = load(base_env(), cloud=cloud.upper())
    assert s.cloud.name == cloud
    assert (s.authority_host, s.graph_endpoint, s.exchange_endpoint) == (authority, graph, exchange)
    assert s.cloud.graph_scope == f"{graph}/.default"
    assert s.cloud.exchange_scope == f"{exchange}/.default"


def test_default_cloud_is_global() -> None:
    assert load(base_env()).cloud.name == "global"


@pytest.mark.parametrize("cloud", ["mars", "germany"])
def test_unknown_or_closed_cloud_is_a_usage_error(cloud: str) -> None:
    with pytest.raises(UsageError) as info:
        load(base_env(), cloud=cloud)
    assert info.value.hint and "global" in info.value.hint


def test_unknown_auth_kind_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="sign-in kind"):
        load(base_env(ESJ_PROVISION_AUTH="password"))


def test_bad_tenant_or_client_id_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="tenant"):
        load(base_env(AZURE_TENANT_ID="contoso"))
    with pytest.raises(UsageError, match="client id"):
        load(base_env(AZURE_CLIENT_ID="not-a-guid"))


def test_missing_certificate_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="certificate file"):
        load(base_env(), certificate_path=str(tmp_path / "missing.pem"))


def test_resolved_auth(tmp_path: Path) -> None:
    cert = tmp_path / "app.pem"
    cert.write_text("x")
    assert load(base_env()).resolved_auth == "secret"
    assert load(base_env(), certificate_path=str(cert)).resolved_auth == "certificate"
    assert load({"AZURE_TENANT_ID": TENANT_GUID, "AZURE_FEDERATED_TOKEN_FILE": "/t"}).resolved_auth == "workload-identity"
    assert load({"AZURE_TENANT_ID": TENANT_GUID}, auth="managed-identity").resolved_auth == "managed-identity"
    assert load({}).resolved_auth == "none"


# -- everything missing is named at once ------------------------------------------------------


def test_missing_sign_in_pieces_are_all_named() -> None:
    with pytest.raises(ConfigError) as info:
        load({}).require_tenant()
    message = info.value.message
    assert "AZURE_TENANT_ID" in message and "a credential" in message
    assert info.value.hint


def test_missing_pieces_for_an_explicit_secret_sign_in() -> None:
    with pytest.raises(ConfigError) as info:
        load({}, auth="secret").require_tenant()
    message = info.value.message
    for name in ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET"):
        assert name in message


def test_complete_settings_pass() -> None:
    load(base_env()).require_tenant()
    load({"AZURE_TENANT_ID": TENANT_GUID}, auth="managed-identity").require_tenant()
