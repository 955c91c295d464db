"""TLS served by uvicorn, with the option of demanding a client certificate (mutual TLS).

Salesforce can present a client certificate with every Outbound Message (the org's own, or
Salesforce's default outbound-messaging certificate). Requiring one signed by the CA in
``RECEIVER_TLS_CA_FILE`` refuses the handshake of anyone else, before a byte of HTTP is read;
``RECEIVER_TLS_CLIENT_NAMES`` narrows it to named certificates (checked per connection in
``receiver.http_protocol``). Python's defaults apply otherwise: TLS 1.2 at least, no
compression, its cipher selection.
"""

from __future__ import annotations

import ssl
from typing import Any, Final

from receiver.errors import ConfigurationError
from receiver.settings import Settings

CLIENT_CERT_MODES: Final = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}


def tls_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's ``ssl_*`` options for the settings; empty without ``RECEIVER_TLS_CERTFILE``.

    The files are loaded once here, so a wrong key, a certificate that is not PEM or an unusable
    CA file stop start-up with a line naming the setting rather than a traceback from uvicorn.
    Raises ``ConfigurationError``.
    """
    if settings.tls_certfile is None:
        return {}
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(settings.tls_certfile, settings.tls_keyfile)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigurationError(
            "RECEIVER_TLS_CERTFILE and RECEIVER_TLS_KEYFILE do not hold a certificate and its private key: "
            f"{exc.strerror or exc}"
        ) from exc
    options: dict[str, Any] = {
        "ssl_certfile": str(settings.tls_certfile),
        "ssl_keyfile": None if settings.tls_keyfile is None else str(settings.tls_keyfile),
        "ssl_cert_reqs": CLIENT_CERT_MODES[settings.tls_client_cert],
    }
    if settings.tls_ca_file is not None:
        try:
            context.load_verify_locations(settings.tls_ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigurationError(
                f"RECEIVER_TLS_CA_FILE holds no usable CA certificate: {exc.strerror or exc}"
            ) from exc
        options["ssl_ca_certs"] = str(settings.tls_ca_file)
    return options
