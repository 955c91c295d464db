"""All configuration: one pydantic-settings class, read from ``RECEIVER_*`` and a TOML file.

Built once at start-up (``load_settings``) and passed down as an argument; nothing else reads
the environment. The environment wins over the TOML file, which wins over the defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, FilePath, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from receiver.access import parse_networks
from receiver.errors import ConfigurationError, InvalidMessage
from receiver.ids import normalize_org_id
from receiver.routing import Routes, describe_route_error
from receiver.signatures import WebhookKeys, parse_webhook_secret

ENV_PREFIX = "RECEIVER_"
#: Salesforce waits 60 s for an answer; the publish bound must stay well below it.
SALESFORCE_TIMEOUT_S = 60
#: Salesforce retries an unacknowledged message for 24 h; dedupe must outlive that window.
DEDUPE_MINIMUM_TTL_S = 25 * 3600

CommaList = Annotated[list[str], NoDecode]


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Every setting of the service; environment names are ``RECEIVER_`` + the upper-case name."""

    # An empty variable is an unset one (``RECEIVER_KAFKA_BOOTSTRAP_SERVERS=`` means the file
    # sink, not a broker named ""): deployment templates often render unset values that way.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True, env_ignore_empty=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"

    kafka_bootstrap_servers: str | None = None
    kafka_topic: str = "salesforce.events"
    kafka_quarantine_topic: str = "salesforce.quarantine"
    kafka_raw_topic: str = "salesforce.raw"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: FilePath | None = None
    #: Extra wait to fill produce batches. 0 by default: aiokafka keeps one produce request in
    #: flight per broker and batches what queues behind it, so batching happens under load anyway,
    #: while a linger adds its full length to every Ack (bench: p50 2.9 -> 0.8 ms at 1,000/s).
    kafka_linger_ms: int = Field(default=0, ge=0, le=1000)
    #: The largest record the producer sends (aiokafka's default); keep it at or below the
    #: broker's message.max.bytes. A larger event gets 413 event_too_large.
    kafka_max_request_bytes: int = Field(default=1_048_576, ge=1024)
    kafka_create_topics: bool = False
    kafka_partitions: int = Field(default=3, ge=1)
    #: ``[[routes]]`` tables: the first rule matching an event names its topics (receiver.routing).
    routes: Routes = []

    data_dir: Path = Path("./var")
    org_map_file: Path | None = None
    wsdl_dir: Path = Path("schemas/outbound")
    integrations: CommaList = ["salesforce", "salesforce-sandbox"]

    terapi_base_url: str = "https://api.terapi.dev"
    terapi_secret_key: SecretStr | None = None
    terapi_legacy_paths: bool = False
    terapi_refresh_interval_s: float = Field(default=300.0, gt=0)
    terapi_unknown_org_refresh_interval_s: float = Field(default=30.0, gt=0)
    #: A connection unchanged in the list is still read again this often: a re-authorization
    #: against another org shows in the read only.
    terapi_reread_interval_s: float = Field(default=3600.0, gt=0)
    terapi_timeout_s: float = Field(default=10.0, gt=0)
    terapi_webhook_secret: SecretStr | None = None

    outbound_token: SecretStr | None = None
    event_secrets: Annotated[list[SecretStr], NoDecode] = []
    #: Per-org ``whsec_`` secrets, from the TOML file: ``[event_secrets_by_org] "00D..." = [...]``
    #: (15- or 18-character ids; held by the 18-character one).
    event_secrets_by_org: dict[str, list[SecretStr]] = {}
    #: Per-integration ``whsec_`` secrets, from the TOML file: ``[event_secrets_by_integration]``.
    event_secrets_by_integration: dict[str, list[SecretStr]] = {}
    event_timestamp_tolerance_s: int = Field(default=300, ge=1)

    redis_url: SecretStr | None = None
    #: ``RECEIVER_REDIS_URL`` names a node of a Redis Cluster (receiver.redis_dedupe).
    redis_cluster: bool = False
    dedupe_ttl_s: int = Field(default=DEDUPE_MINIMUM_TTL_S, ge=DEDUPE_MINIMUM_TTL_S)
    dedupe_max_entries: int = Field(default=1_000_000, ge=1)

    #: Source allow-list for /webhooks/* (receiver.access); empty: every source.
    allowed_cidrs: CommaList = []
    #: Proxies whose X-Forwarded-For is believed, read from the right.
    trusted_proxies: CommaList = []
    #: TLS served by uvicorn (receiver.tls); mutual TLS with ``tls_client_cert`` and a CA file.
    tls_certfile: FilePath | None = None
    tls_keyfile: FilePath | None = None
    tls_ca_file: FilePath | None = None
    tls_client_cert: Literal["none", "optional", "required"] = "none"
    #: When set, a client certificate's subject CN or a DNS name of it must be one of these:
    #: a public CA signs certificates for many, the CA file alone would let them all in.
    tls_client_names: CommaList = []
    #: Connection bounds (receiver.http_protocol): a slow or bloated request head is refused.
    max_header_count: int = Field(default=100, ge=8, le=10_000)
    max_header_bytes: int = Field(default=16_384, ge=1024, le=1_048_576)
    request_head_timeout_s: float = Field(default=10.0, gt=0, le=300)
    #: The whole body must arrive within this (408), well inside Salesforce's 60 s.
    request_timeout_s: float = Field(default=30.0, gt=0, lt=SALESFORCE_TIMEOUT_S)
    keep_alive_timeout_s: int = Field(default=15, ge=1, le=3600)
    max_body_bytes: int = Field(default=5_242_880, ge=1024)
    max_xml_depth: int = Field(default=100, ge=8)
    max_xml_elements: int = Field(default=50_000, ge=100)
    max_json_depth: int = Field(default=64, ge=4)
    max_events_per_request: int = Field(default=1000, ge=1)
    max_requests_in_flight: int = Field(default=1000, ge=1)
    #: Requests of one org being published at once; past it 429. 0: no bound per org.
    max_requests_in_flight_per_org: int = Field(default=0, ge=0)
    #: Bytes of request bodies held at once (declared, or max_body_bytes when chunked); past it 503.
    #: What bounds memory under a flood of large bodies: about 4 bytes of RSS per byte here.
    max_body_bytes_in_flight: int = Field(default=64 * 1024 * 1024, ge=1024)
    max_events_in_flight: int = Field(default=20_000, ge=100)
    publish_timeout_s: float = Field(default=20.0, gt=0, lt=SALESFORCE_TIMEOUT_S)
    shutdown_timeout_s: float = Field(default=25.0, gt=0)

    recording_enabled: bool = True
    recording_max_file_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    recording_retention_days: int = Field(default=14, ge=1)
    #: Recordings waiting to be written, per outlet; past it requests go unrecorded (counted).
    recording_queue_max_bytes: int = Field(default=32 * 1024 * 1024, ge=0)
    #: With Kafka, also send every recording to ``kafka_raw_topic`` (``salesforce.raw``).
    kafka_record_raw: bool = False

    @field_validator(
        "integrations", "allowed_cidrs", "trusted_proxies", "tls_client_names", "event_secrets", mode="before"
    )
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return _split_commas(value)

    @field_validator("integrations")
    @classmethod
    def _some_integration(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name at least one integration, e.g. salesforce,salesforce-sandbox")
        return value

    @field_validator("outbound_token", "terapi_webhook_secret", "terapi_secret_key", "kafka_sasl_password")
    @classmethod
    def _not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        # From the TOML file (an empty variable is already unset): "" would let anyone in, or
        # fail every request at the first use instead of at start-up.
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is empty: remove it, or set a value")
        return value

    @field_validator("event_secrets")
    @classmethod
    def _webhook_secrets(cls, value: list[SecretStr]) -> list[SecretStr]:
        _check_webhook_secrets(value)
        return value

    @field_validator("event_secrets_by_org")
    @classmethod
    def _secrets_by_org(cls, value: dict[str, list[SecretStr]]) -> dict[str, list[SecretStr]]:
        by_org: dict[str, list[SecretStr]] = {}
        for raw_org_id, secrets in value.items():
            try:
                org_id = normalize_org_id(raw_org_id)
            except InvalidMessage as exc:
                raise ValueError(f"{raw_org_id!r}: {exc.detail}") from None
            if org_id in by_org:
                raise ValueError(f"{raw_org_id!r}: the org is listed twice (as 15 and 18 characters)")
            _check_webhook_secrets(secrets)
            by_org[org_id] = secrets
        return by_org

    @field_validator("event_secrets_by_integration")
    @classmethod
    def _secrets_by_integration(
        cls, value: dict[str, list[SecretStr]], info: ValidationInfo
    ) -> dict[str, list[SecretStr]]:
        served = info.data.get("integrations", [])
        for integration, secrets in value.items():
            if integration not in served:
                raise ValueError(f"{integration!r} is not in RECEIVER_INTEGRATIONS ({','.join(served)})")
            _check_webhook_secrets(secrets)
        return value

    @field_validator("max_body_bytes_in_flight")
    @classmethod
    def _room_for_one_body(cls, value: int, info: ValidationInfo) -> int:
        if value < info.data.get("max_body_bytes", 0):
            raise ValueError("must be at least RECEIVER_MAX_BODY_BYTES, or no body of that size is ever served")
        return value

    @field_validator("allowed_cidrs", "trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        parse_networks(value)
        return value

    # Fields are validated in order: the ones above are in ``info.data`` when they were valid.
    @field_validator("tls_keyfile", "tls_ca_file")
    @classmethod
    def _needs_certificate(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and info.data.get("tls_certfile") is None:
            raise ValueError("needs RECEIVER_TLS_CERTFILE as well")
        return value

    @field_validator("tls_client_cert")
    @classmethod
    def _needs_ca_file(cls, value: str, info: ValidationInfo) -> str:
        if value != "none" and info.data.get("tls_ca_file") is None:
            raise ValueError("client certificates need RECEIVER_TLS_CERTFILE and RECEIVER_TLS_CA_FILE")
        return value

    @field_validator("tls_client_names")
    @classmethod
    def _names_need_client_certificates(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if value and info.data.get("tls_client_cert", "none") == "none":
            raise ValueError("client names need RECEIVER_TLS_CLIENT_CERT optional or required")
        return value

    @model_validator(mode="after")
    def _sasl_complete(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL_") and not (
            self.kafka_sasl_mechanism and self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"RECEIVER_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "RECEIVER_KAFKA_SASL_MECHANISM, RECEIVER_KAFKA_SASL_USERNAME and RECEIVER_KAFKA_SASL_PASSWORD"
            )
        return self

    def webhook_keys(self) -> WebhookKeys:
        """The HMAC keys of ``event_secrets``, ``event_secrets_by_org`` and ``..._by_integration``."""
        return WebhookKeys.parse(self.event_secrets, self.event_secrets_by_org, self.event_secrets_by_integration)

    @property
    def uses_kafka(self) -> bool:
        return self.kafka_bootstrap_servers is not None

    def advice(self) -> list[str]:
        """Valid but doubtful combinations, each one line for the start-up log."""
        notes = []
        if self.publish_timeout_s >= self.shutdown_timeout_s:
            notes.append(
                f"RECEIVER_PUBLISH_TIMEOUT_S ({self.publish_timeout_s:g}) is not below RECEIVER_SHUTDOWN_TIMEOUT_S "
                f"({self.shutdown_timeout_s:g}): at SIGTERM a publish still waiting is cut off at the deadline "
                "(503 shutting_down) instead of ending with its own answer"
            )
        return notes

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = settings_cls.model_config.get("toml_file")
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
        if toml_file is not None:
            sources += (TomlConfigSettingsSource(settings_cls, toml_file=toml_file),)
        return sources


def _check_webhook_secrets(secrets: list[SecretStr]) -> None:
    """Raises ``ValueError`` (never quoting the secret) unless each is a usable ``whsec_`` secret."""
    for secret in secrets:
        try:
            parse_webhook_secret(secret.get_secret_value())
        except ConfigurationError as exc:
            raise ValueError(exc.detail) from None


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from the environment, ``config_file`` (TOML) and ``overrides``.

    Raises ``ConfigurationError`` with one line naming the first bad setting and its value
    (secrets are never echoed).
    """
    settings_cls: type[Settings] = Settings
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigurationError(f"configuration file {str(config_file)!r} does not exist")

        class _FromFile(Settings):
            model_config = SettingsConfigDict(toml_file=config_file)

        settings_cls = _FromFile
    try:
        return settings_cls(**overrides)
    except ValidationError as exc:
        raise ConfigurationError(_describe(exc)) from exc
    except ValueError as exc:  # a TOML syntax error surfaces as a ValueError subclass
        raise ConfigurationError(f"configuration file {str(config_file)!r} is not valid TOML: {exc}") from exc


def _describe(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    if not error["loc"]:  # a rule across settings: its message names them; the input is all of them
        return str(error["msg"]).removeprefix("Value error, ")
    if error["loc"][:1] == ("routes",):
        return describe_route_error(error)
    name = ".".join(str(part) for part in error["loc"]) or "settings"
    setting = ENV_PREFIX + name.split(".")[0].upper()
    value = error.get("input")
    shown = "<hidden>" if any(word in name for word in ("secret", "password", "token", "redis_url")) else repr(value)
    if error["type"] == "extra_forbidden":
        return f"unknown setting {name!r} in the configuration file"
    return f"setting {setting} has value {shown}: {error['msg']}"
