"""Text that is safe to print: URLs without their secrets, data without terminal codes.

Two things reach a terminal or a log that must not: a password (in a database URL's
userinfo or in its query string, ``?user=u&password=…`` as libpq allows) and the
control sequences that data may carry (a title holding ``ESC [2J`` clears the screen,
an OSC sequence retitles the window).  Every URL printed goes through
:func:`mask_url`, every message that may embed one through :func:`mask_urls_in`, and
every piece of data shown in a terminal through :func:`terminal_safe`.

Masking works by position (the userinfo's password, the value of a secret query
parameter), never by searching for the password's text: a one-letter password would
otherwise mask every occurrence of that letter, and a password that differs in its
encoding would be missed.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

MASK = "***"
# Query parameters whose values are secrets (libpq's password and sslpassword, and the
# usual names of object-store credentials).
SECRET_PARAMETERS = frozenset({"password", "passwd", "pwd", "sslpassword", "secret", "token",
                               "access_token", "secret_key", "secret_access_key", "api_key"})
# scheme://user:password@rest: the password runs to the LAST '@' (an unencoded '@' in a
# password must not leak the part after it).
_USERINFO = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@?#]*:)(?P<password>.*)@(?P<tail>[^@]*)$",
                       re.DOTALL)
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
# key=value secrets outside URLs, as in a libpq connection string ("password=x host=y").
_KEY_VALUE = re.compile(r"(?P<key>\b(?:%s)\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'|[^\s&;]+)"
                        % "|".join(sorted(SECRET_PARAMETERS)), re.IGNORECASE)


def mask_url(url: Any) -> str:
    """``url`` (a string or a SQLAlchemy ``URL``) as it may be printed: the userinfo's
    password and the values of secret query parameters replaced by ``***``.

    Works on strings no parser accepts, too (they appear in errors)."""
    if hasattr(url, "render_as_string"):  # a SQLAlchemy URL: its query may hold a password
        url = url.render_as_string(hide_password=False)
    text = str(url)
    match = _USERINFO.match(text)
    if match is not None:
        head, tail = f"{match['head']}{MASK}@", match["tail"]
    else:
        scheme_end = text.find("://")
        split = scheme_end + 3 if scheme_end >= 0 else 0
        head, tail = text[:split], text[split:]
    return head + _mask_query(tail)


def _mask_query(rest: str) -> str:
    """``host/path?query#fragment`` with every secret parameter's value masked."""
    start = rest.find("?")
    if start < 0:
        return rest
    parameters = rest[start + 1:].split("&")
    for index, parameter in enumerate(parameters):
        key, equals, _ = parameter.partition("=")
        if equals and unquote(key).strip().lower() in SECRET_PARAMETERS:
            parameters[index] = f"{key}={MASK}"
    return rest[:start + 1] + "&".join(parameters)


def mask_urls_in(message: str) -> str:
    """``message`` with every URL in it masked (:func:`mask_url`) and every
    ``password=…``-style pair outside a URL too."""
    masked = _URL_IN_TEXT.sub(lambda match: mask_url(match.group(0)), message)
    return _KEY_VALUE.sub(lambda match: match["key"] + MASK, masked)


def _escape(character: str) -> str:
    code = ord(character)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


# C0 controls but tab and newline, DEL, C1 controls (U+009B is a one-character CSI), and
# the bidirectional overrides that reorder what a terminal shows.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def terminal_safe(value: Any) -> Any:
    """Data as it may be shown in a terminal: every control character (escape
    sequences start with one) written out as ``\\x1b``-style text, so a title or a
    plugin's error can neither move the cursor nor clear the screen.  Strings inside
    lists and dicts are made safe too; other values are returned as they are."""
    if isinstance(value, str):
        return _CONTROL.sub(lambda match: _escape(match.group(0)), value)
    if isinstance(value, dict):
        return {key: terminal_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(terminal_safe(item) for item in value)
    return value
