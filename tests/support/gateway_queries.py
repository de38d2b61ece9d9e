"""Query strings of `/rest/v1/products` that the gateways judge before PostgREST does (issue 18),
and some they must let through. The local stack's nginx (tests/security/test_bad_requests.py,
through the real stack) and Kong's Lua (tests/deploy/test_compose.py, on LuaJIT) judge the same
cases. A `str` here holds one character a byte: chars above ASCII are raw bytes in the request
line (`raw`)."""

from __future__ import annotations

from cli.dev.gateway import Limits

LIMITS = Limits()

# Not UTF-8 once percent-decoded: refused for every caller (PostgREST 12 answered them 500).
NOT_UTF8 = [
    "select=id&name=eq.%C3%28",  # the issue's: a lead byte, then an ASCII "("
    "select=id&name=eq.%FF",  # a byte UTF-8 never holds
    "select=id&name=eq.%C3",  # cut short at the end
    "select=id&name=eq.%E2%82",  # a three-byte sequence cut short
    "select=id&name=eq.%A9",  # a continuation byte no lead byte announced
    "select=id&name=eq.%C3%A9%A9",  # one continuation byte too many
    "select=id&name=eq.%C0%AF",  # an overlong "/"
    "select=id&name=eq.%E0%80%AF",  # an overlong "/" in three bytes
    "select=id&name=eq.%ED%A0%80",  # a UTF-16 surrogate
    "select=id&name=eq.%F4%90%80%80",  # past U+10FFFF
    "select=id&name=eq.\xc3\xa9",  # raw bytes, even UTF-8 ones: URIs percent-encode them
    "select=id&name=ilike.*%C3*&category=eq.compute",  # anywhere in the query
]
UTF8 = [
    "select=id&name=eq.%C3%A9t%C3%A9",  # été
    "select=id&name=eq.%e2%82%ac",  # €, in lower case
    "select=id&name=eq.%F0%9F%8D%84",  # a mushroom, four bytes
    "select=id&name=eq.%EF%BF%BD",  # U+FFFD
    "select=id&name=eq.100%25",  # an escaped "%"
    "select=id&name=eq.%zz",  # a malformed escape is no byte: PostgREST keeps it as it is
]


def _or(*terms: str) -> str:
    return "or=(" + ",".join(terms) + ")"


_PATTERNS = [f"name.ilike.*{word}*" for word in ("ubuntu", "node", "slice", "gateway", "debian", "alpine")]
# Cheap terms to fill a query up to the term allowance.
_CHEAP = [f"price.gte.{number}" for number in range(100)]

# What an anonymous caller may ask of the database (Limits): refused to anon with the reason,
# answered to a signed-in user.
ANON_REFUSED = {
    # Operators and digits hidden behind percent-encoding.
    "select=id&na%6De=eq.x": "invalid_query_encoding",
    "select=id&name=%69like.*x*": "invalid_query_encoding",
    "select=id&price=gt.%31": "invalid_query_encoding",
    # One pattern too many, however it is written.
    "select=id&" + _or(*_PATTERNS[: LIMITS.anon_pattern_terms + 1]): "filter_too_complex",
    "select=id&" + _or(*(t.replace(".", "%2E") for t in _PATTERNS[: LIMITS.anon_pattern_terms + 1])): (
        "filter_too_complex"
    ),
    "select=id&"
    + _or(*(t.replace("name.", "name.not.") for t in _PATTERNS[: LIMITS.anon_pattern_terms + 1])): (
        "filter_too_complex"
    ),
    "select=id&description=fts.green&" + _or(*_PATTERNS[: LIMITS.anon_pattern_terms]): "filter_too_complex",
    "select=id&name=imatch.^a&name=like.*b*&name=match.c&description=ilike.*d*&description=like.*e*": (
        "filter_too_complex"
    ),
    # One wildcard too many, however it is written.
    "select=id&name=ilike." + "*a" * LIMITS.anon_wildcards + "*": "filter_too_complex",
    "select=id&name=like.%25" + "a%25" * LIMITS.anon_wildcards: "filter_too_complex",
    "select=id&name=ilike.*a*&description=ilike."
    + "%2Ab" * (LIMITS.anon_wildcards - 1): "filter_too_complex",
    # A long query with a pattern; and the same length without one is allowed (ANON_ALLOWED).
    "select=id&name=ilike.*a*&description=neq." + "x" * LIMITS.anon_pattern_query_bytes: "filter_too_complex",
    # A list of patterns.
    "select=id&name=ilike(any).{*a*,*b*}": "filter_too_complex",
    "select=id&name=like%28all%29.%7B*a*%7D": "filter_too_complex",
    # One term too many.
    "select=id&" + _or(*_CHEAP[: LIMITS.anon_filter_terms + 1]): "filter_too_complex",
    "select=id&and=(" + ",".join(_CHEAP[: LIMITS.anon_filter_terms]) + ")&name=eq.x": "filter_too_complex",
}
ANON_ALLOWED = [
    "select=id,name&name=ilike.*ubuntu*&category=eq.compute&order=created_at.desc&limit=20",
    "select=id&category=in.%28compute%2Cnode%29&price=lte.10",
    # Exactly the allowances: every pattern, every term.
    "select=id&"
    + _or(*_PATTERNS[: LIMITS.anon_pattern_terms])
    + "&and=("
    + ",".join(_CHEAP[: LIMITS.anon_filter_terms - LIMITS.anon_pattern_terms])
    + ")",
    "select=id&name=eq.x&description=neq." + "x" * LIMITS.anon_pattern_query_bytes,
    # Operator names as values are values.
    "select=id&name=eq.ilike&description=neq.like",
    # Full-text search with a configuration in parentheses is no list.
    "select=id&description=fts(simple).green",
    *UTF8,
]

# Content-Types of a request that may carry a body (POST, PATCH, PUT, DELETE on /rest/v1/): JSON
# reaches PostgREST (None: no Content-Type, which PostgREST reads as JSON), anything else is
# refused 415 `unsupported_media_type` (PostgREST 12 answered bad UTF-8 in CSV and form bodies 500).
JSON_MEDIA_TYPES: list[str | None] = [
    None,
    "application/json",
    "application/json; charset=utf-8",
    "Application/JSON ;charset=UTF-8",
    "application/vnd.pgrst.object+json",
]
OTHER_MEDIA_TYPES = [
    "text/csv",
    "text/csv; charset=utf-8",
    "application/x-www-form-urlencoded",
    "text/plain",
    "application/octet-stream",
    "application/xml",
    "multipart/form-data; boundary=x",
    "application/jsonx",
    "application/json garbage",
    "application/vnd.pgrst.object",
    "application/vnd.pgrst.+json",
    "application/vnd.pgrst.a+b+json",
]
