"""The gateway: nginx playing the part Kong plays in Supabase.

Same paths (`/rest/v1/`, `/auth/v1/`, `/realtime/v1/`), same key check (an `apikey` header or
query parameter holding the anon or service_role key, else 401 with Kong's messages), so that
supabase-py, supabase-js and curl work unchanged against the local stack; and the same abuse
limits as supabase/kong.yml (`Limits`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import httpx

from cli.dev.processes import (
    RunAs,
    ServiceFailed,
    find_program,
    log_tail,
    pid_alive,
    read_pid,
    terminate,
    wait_until,
)
from cli.dev.versions import VERSIONS, auth_absent_because

# What browsers may send, as Supabase's gateway allows it.
CORS_HEADERS = ", ".join(
    [
        "authorization",
        "apikey",
        "content-type",
        "prefer",
        "range",
        "accept-profile",
        "content-profile",
        "x-client-info",
    ]
)
NOT_IN_STACK = (
    "{service} is not part of the local stack{why}; set {setting} in the stack to the URL of a running server"
)
# The API's bodies are JSON arguments and rows, kilobytes: anything past this is refused (413)
# before it is read, here and by Kong's request-size-limiting (supabase/kong.yml).
BODY_LIMIT_MIB = 1
# The 503's JSON goes into a single-quoted nginx string, and its message may carry a reason that
# `./run setup` wrote: only characters to which neither nginx (quotes, `\`, `$` variables) nor JSON
# (quotes, `\`, control characters) give a meaning are kept.
_UNSAFE = re.compile(r"[^A-Za-z0-9 .,:;/()@_+=-]+")

# PostgREST 12 answers a query string that is not UTF-8 once percent-decoded with a bare 500
# ("Something went wrong"): the gateway refuses it first, for every caller (400
# `invalid_query_encoding`), as Kong's global pre-function does (supabase/kong.yml). Raw bytes
# above ASCII are refused too (URIs percent-encode them), so only percent-encoded bytes are
# judged: a lead byte not followed by the continuation bytes it announces (nor by the narrower
# second byte that E0, ED, F0 and F4 need against overlong forms, surrogates and code points past
# U+10FFFF), a continuation byte that no lead byte announced, or a byte no UTF-8 holds. Malformed
# escapes (`%zz`) are no bytes: PostgREST keeps them as they are, and so do the gateways.
_CONT = "%[89ab][0-9a-f]"
INVALID_UTF8 = [
    "[\\x80-\\xff]",
    "%(?:c[01]|f[5-9a-f])",
    f"%(?:c[2-9a-f]|d[0-9a-f])(?!{_CONT})",
    f"%e0(?!%[ab][0-9a-f]{_CONT})",
    f"%(?:e[1-9abcef])(?!{_CONT}{_CONT})",
    f"%ed(?!%[89][0-9a-f]{_CONT})",
    f"%f0(?!%[9ab][0-9a-f]{_CONT}{_CONT})",
    f"%f[1-3](?!{_CONT}{_CONT}{_CONT})",
    f"%f4(?!%8[0-9a-f]{_CONT}{_CONT})",
    f"(?<!%[c-f][0-9a-f]|%[ef][0-9a-f]{_CONT}|%f[0-9a-f]{_CONT}{_CONT}){_CONT}",
]
# What PostgREST may read a request body as, for every caller: JSON (and PostgREST's JSON vendor
# types, `application/vnd.pgrst.object+json`), or no Content-Type at all (PostgREST reads JSON).
# PostgREST 12 also reads CSV, form, plain text, XML and octet-stream bodies, and answers a CSV or
# form body that is not UTF-8 with a bare 500; no client of this API sends them, so a request that
# may carry a body (BODY_METHODS) with any other media type is refused (415
# `unsupported_media_type`), as Kong's global pre-function refuses it (supabase/kong.yml).
JSON_MEDIA_TYPE = r"^application/(?:json|vnd\.pgrst\.[a-z0-9.-]+\+json)\s*(?:;.*)?$"
BODY_METHODS = ("POST", "PATCH", "PUT", "DELETE")
UNSUPPORTED_MEDIA_TYPE = "a request body must be JSON (Content-Type: application/json)"

# PostgREST's filter operators; a pattern operator tests every row it reaches with a pattern or a
# text search. In a query an operator stands between delimiters (`name=ilike.x`,
# `or=(name.ilike.x,...)`, `not.ilike`, `ilike(any)`), each possibly percent-encoded.
FILTER_OPERATORS = [
    *["eq", "neq", "gt", "gte", "lt", "lte", "like", "ilike", "match", "imatch", "in", "is", "isdistinct"],
    *["fts", "plfts", "phfts", "wfts", "cs", "cd", "ov", "sl", "sr", "nxr", "nxl", "adj"],
]
PATTERN_OPERATORS = ["like", "ilike", "match", "imatch", "fts", "plfts", "phfts", "wfts"]
LISTED_PATTERN_OPERATORS = ["like", "ilike", "match", "imatch"]  # those that take (any) and (all)
_BEFORE_OPERATOR = "(?:^|(?<=[&=.(,]|%2e|%28|%2c|%3d))"
_AFTER_OPERATOR = "(?=[.(]|%2e|%28)"
ENCODED_ALPHANUMERIC = "%(?:3[0-9]|[46][1-9a-f]|[57][0-9a])"
WILDCARD = "(?:[*]|%2a|%25)"


def operator_regex(operators: list[str], after: str = _AFTER_OPERATOR) -> str:
    return f"{_BEFORE_OPERATOR}(?:{'|'.join(operators)}){after}"


def more_than(count: int, regex: str) -> str:
    """Matches a query holding more than `count` matches of `regex`; each is taken once (an
    atomic group), so a query is scanned once whatever it holds."""
    return f"^(?>.*?{regex}){{{count + 1}}}"


def binary() -> Path:
    return find_program(
        "nginx",
        extra=[Path("/usr/sbin/nginx")],
        env_var="MYCELIUM_NGINX_BIN",
        install_hint="install nginx (Debian: apt-get install nginx-light), or set MYCELIUM_NGINX_BIN",
    )


@dataclass(frozen=True)
class Limits:
    """What one caller may ask of the gateway; settings of the stack (`limits` in stack.json).

    An anonymous caller (the anon key, or no token at all) is counted by its address, a signed-in
    one by its access token: one token is one session of one user, and users behind one address
    (an office, a phone carrier) do not share a budget. The service_role key, which only back ends
    hold, is not limited. A caller may send `burst` requests at once above its rate per second; as
    many again then wait their turn, and past those it is answered 429 (`rate_limited`, with
    `Retry-After`). supabase/kong.yml holds the same numbers for Kong, whose rate-limiting counts
    in windows and refuses at once: `second` = burst, `minute` = 60 x per second.

    An anonymous query string longer than `anon_query_bytes` (as sent, percent-encoded) is
    answered 414 (`query_too_long`) before it reaches the database: a filter of hundreds of
    `ilike` terms holds a database connection for the whole anon statement timeout. Signed-in
    callers keep nginx's and Kong's request line limit (8 KiB).

    Within that allowance an anonymous query may name at most `anon_filter_terms` filter
    operators (`eq`, `in`, `ilike`, ...), at most `anon_pattern_terms` of them patterns (`like`,
    `ilike`, `match`, `imatch` and the full-text ones, which test every row they reach), and
    none of those with the `(any)`/`(all)` lists, at most `anon_wildcards` wildcards (`*`, or
    `%` sent as `%25`: a pattern of many tries every place each can stand), and a query naming a
    pattern operator may hold `anon_pattern_query_bytes` (PostgreSQL lower-cases an `ilike`
    pattern again for every row, so a long one costs as much as many); else 400
    (`filter_too_complex`). About 95
    `ilike` terms fit in 2 KiB, and anon's rate let such queries keep the database busy enough to
    make signed-in users' reads a hundred times slower (bench/flood.py). The operators are
    counted as written, so an anonymous query may not percent-encode letters or digits (400
    `invalid_query_encoding`): no client does, and PostgREST would decode them into operators.

    An anonymous request body may hold `anon_body_bytes` (413 `body_too_large`; signed-in and
    service callers keep BODY_LIMIT_MIB): anon's RPCs take an amount or a few search terms, and
    PostgREST 12 builds its "Perhaps you meant" hint for an unknown argument name in time that
    grows with the square of the name's length, so a long name in a large body costs seconds of
    its CPU."""

    anon_per_second: int = 20
    anon_burst: int = 40
    user_per_second: int = 50
    user_burst: int = 100
    anon_query_bytes: int = 2048
    anon_filter_terms: int = 16
    anon_pattern_terms: int = 4
    anon_wildcards: int = 8
    anon_pattern_query_bytes: int = 256
    anon_body_bytes: int = 2048


@dataclass(frozen=True)
class Gateway:
    directory: Path  # the nginx prefix: its config, pid file and temp files live here
    log: Path
    port: int
    run_as: RunAs

    @property
    def config(self) -> Path:
        return self.directory / "nginx.conf"

    @property
    def pid_file(self) -> Path:
        return self.directory / "nginx.pid"

    def write_config(
        self,
        *,
        rest_port: int,
        anon_key: str,
        service_role_key: str,
        auth_upstream: str | None,
        realtime_upstream: str | None,
        limits: Limits,
    ) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.run_as.own(self.directory)
        self.config.write_text(
            _CONFIG.format(
                body_limit_mib=BODY_LIMIT_MIB,
                anon_rate=limits.anon_per_second,
                anon_burst=limits.anon_burst,
                anon_queue=2 * limits.anon_burst,
                user_rate=limits.user_per_second,
                user_burst=limits.user_burst,
                user_queue=2 * limits.user_burst,
                anon_query_bytes=limits.anon_query_bytes,
                invalid_utf8="\n".join(f'    "~*{regex}" 1;' for regex in INVALID_UTF8),
                encoded_alphanumeric=ENCODED_ALPHANUMERIC,
                listed_pattern=operator_regex(LISTED_PATTERN_OPERATORS, after="(?:[(]|%28)"),
                too_many_patterns=more_than(limits.anon_pattern_terms, operator_regex(PATTERN_OPERATORS)),
                too_many_terms=more_than(limits.anon_filter_terms, operator_regex(FILTER_OPERATORS)),
                too_many_wildcards=more_than(limits.anon_wildcards, WILDCARD),
                long_pattern_query=f"^(?=.{{{limits.anon_pattern_query_bytes + 1}}})(?>.*?"
                + operator_regex(PATTERN_OPERATORS)
                + ")",
                filter_too_complex=_answer("filter_too_complex", filter_too_complex_message(limits)),
                not_utf8=_answer(
                    "invalid_query_encoding", "a query string must be UTF-8 once percent-decoded"
                ),
                json_media_type=JSON_MEDIA_TYPE,
                body_methods="\n".join(f"    {method} 1;" for method in BODY_METHODS),
                unsupported_media_type=_answer("unsupported_media_type", UNSUPPORTED_MEDIA_TYPE),
                anon_body_bytes=limits.anon_body_bytes,
                rest_proxy=_REST_PROXY,
                encoded_alphanumeric_answer=_answer(
                    "invalid_query_encoding", "an anonymous query may not percent-encode letters or digits"
                ),
                # At least one character more than the allowance (PCRE counts up to 65535).
                long_query=f"~^.{{{limits.anon_query_bytes + 1}}}",
                pid=self.pid_file,
                log=self.log,
                prefix=self.directory,
                port=self.port,
                cors_headers=CORS_HEADERS,
                rest_port=rest_port,
                anon_key=anon_key,
                service_role_key=service_role_key,
                auth=_upstream(
                    auth_upstream,
                    f"Supabase Auth (GoTrue) {VERSIONS.auth_version}",
                    "auth_upstream",
                    why=auth_absent_because(),
                ),
                realtime=_upstream(
                    realtime_upstream, f"Supabase Realtime {VERSIONS.realtime_version}", "realtime_upstream"
                ),
            )
        )

    def running(self) -> bool:
        return pid_alive(read_pid(self.pid_file))

    def ready(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self) -> None:
        command: list[str | Path] = [binary(), "-p", self.directory, "-c", self.config, "-e", self.log]
        check = self.run_as.run([*command, "-t", "-q"])
        if check.returncode != 0:
            raise ServiceFailed(f"the gateway's nginx configuration is invalid: {check.stderr.strip()}")
        result = self.run_as.run(command)
        if result.returncode != 0 or not wait_until(self.ready, timeout=15):
            raise ServiceFailed(
                f"the gateway (nginx) did not start on port {self.port}: "
                f"{result.stderr.strip() or log_tail(self.log)}"
            )

    def stop(self) -> None:
        terminate(read_pid(self.pid_file))
        self.pid_file.unlink(missing_ok=True)


def filter_too_complex_message(limits: Limits) -> str:
    """What a caller whose anonymous filter is refused is told (Kong says the same)."""
    return (
        f"an anonymous query may hold {limits.anon_filter_terms} filter terms, at most "
        f"{limits.anon_pattern_terms} of them patterns (like, ilike, match, imatch, fts), "
        f"no pattern lists (any, all), {limits.anon_wildcards} wildcards, and "
        f"{limits.anon_pattern_query_bytes} bytes when it holds a pattern"
    )


def _answer(code: str, message: str) -> str:
    """The JSON body of one of the gateway's own answers."""
    return json.dumps({"code": code, "message": message}, separators=(",", ":"))


# How /rest/v1/ reaches PostgREST, for every caller: the key is not passed on (PostgREST reads the
# token), and connections are kept open (see the upstream).
_REST_PROXY = """      proxy_set_header apikey "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass http://postgrest/;"""


def _upstream(url: str | None, service: str, setting: str, why: str = "") -> str:
    if url:
        return (
            f"proxy_pass {url.rstrip('/')}/;\n"
            "      proxy_http_version 1.1;\n"
            "      proxy_set_header Upgrade $http_upgrade;\n"
            "      proxy_set_header Connection $connection_upgrade;\n"
            "      proxy_read_timeout 1h;"
        )
    message = NOT_IN_STACK.format(service=service, setting=setting, why=f" ({why})" if why else "")
    body = json.dumps({"message": " ".join(_UNSAFE.sub(" ", message).split())}, separators=(",", ":"))
    return f"return 503 '{body}';"


_CONFIG = r"""
# Generated by `mycelium dev`: the local stack's gateway. Edits are overwritten by `mycelium dev up`.
daemon on;
worker_processes 1;
# Query strings are matched against several regular expressions a request: compiled, not interpreted.
pcre_jit on;
pid {pid};
error_log {log} warn;

events {{ worker_connections 1024; }}

http {{
  access_log off;
  client_body_temp_path {prefix}/client_body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  client_max_body_size {body_limit_mib}m;
  map_hash_bucket_size 512;
  # PostgREST echoes the query string in Content-Location: a long filter makes a response header
  # larger than nginx's default 4k buffer, which nginx answers 502 ("upstream sent too big
  # header"). Kong runs with these buffers in Supabase's compose file and in ours.
  proxy_buffer_size 160k;
  proxy_buffers 64 160k;

  # Kong's key-auth: the key comes in the `apikey` header, or the `apikey` query parameter
  # (websockets cannot send headers).
  map $http_apikey $presented_key {{
    "" $arg_apikey;
    default $http_apikey;
  }}
  map $presented_key $key_check {{
    "" missing;
    "{anon_key}" ok;
    "{service_role_key}" ok;
    default invalid;
  }}
  map $http_upgrade $connection_upgrade {{
    default upgrade;
    "" close;
  }}

  # Who calls, for the limits (see Limits in cli/dev/gateway.py). The database acts as the role of
  # the bearer token: none or the anon key is anon. Any other token counts as a user's: one that
  # PostgREST refuses costs a signature check and never reaches the database, so a caller gains
  # nothing by inventing tokens. Whoever presents the service_role key is a back end.
  map $http_authorization $bearer_token {{
    "~*^bearer\s+(?<token>\S+)" $token;
    default "";
  }}
  map $bearer_token $bearer_caller {{
    "" anon;
    "{anon_key}" anon;
    "{service_role_key}" service;
    default user;
  }}
  map $presented_key $caller {{
    "{service_role_key}" service;
    default $bearer_caller;
  }}
  # A user is counted by the token's signature: distinct for every token, and 43 bytes where the
  # token takes hundreds in the zone. An empty key is not counted, so each zone sees its callers only.
  map $bearer_token $token_signature {{
    "~\.(?<signature>[^.]+)$" $signature;
    default $bearer_token;
  }}
  map $caller $anon_limit_key {{
    anon $binary_remote_addr;
    default "";
  }}
  map $caller $user_limit_key {{
    user $token_signature;
    default "";
  }}
  limit_req_zone $anon_limit_key zone=anon:10m rate={anon_rate}r/s;
  limit_req_zone $user_limit_key zone=users:10m rate={user_rate}r/s;
  limit_req_status 429;
  # Refusals are logged as warnings; waits, one level lower, are not.
  limit_req_log_level warn;
  map $args $query_length {{
    "{long_query}" long;
    default short;
  }}
  map "$caller:$query_length" $anon_query_too_long {{
    anon:long 1;
    default 0;
  }}
  # Every caller's query string must be UTF-8 once percent-decoded (INVALID_UTF8).
  map $args $invalid_query_encoding {{
{invalid_utf8}
    default 0;
  }}
  # How much an anonymous filter may ask of the database (Limits): only anon's query strings are
  # matched, the others' are not even read.
  map $caller $anon_args {{
    anon $args;
    default "";
  }}
  map $anon_args $anon_filter {{
    "~*{encoded_alphanumeric}" encoded;
    "~*{listed_pattern}" too_complex;
    "~*{too_many_patterns}" too_complex;
    "~*{too_many_terms}" too_complex;
    "~*{too_many_wildcards}" too_complex;
    "~*{long_pattern_query}" too_complex;
    default "";
  }}
  # A request that may carry a body must carry JSON (JSON_MEDIA_TYPE), or say nothing of its type.
  map $request_method $body_method {{
{body_methods}
    default 0;
  }}
  map $content_type $json_body {{
    "" 1;
    "~*{json_media_type}" 1;
    default 0;
  }}
  map "$body_method:$json_body" $unsupported_media_type {{
    1:0 1;
    default 0;
  }}
  map $status $retry_after {{
    429 1;
    default "";
  }}

  # Connections to PostgREST are kept open and reused, as Kong keeps its upstream connections:
  # a new TCP connection per request would cost nginx and PostgREST more than the proxying.
  upstream postgrest {{
    server 127.0.0.1:{rest_port};
    keepalive 32;
  }}

  server {{
    listen 127.0.0.1:{port};
    server_name localhost;
    # The token check below answers from a second error page.
    recursive_error_pages on;
    # What the gateway answers itself is JSON, as Kong's answers are.
    default_type application/json;
    # Every caller is counted, the health check too (Limits: the service_role key is not).
    limit_req zone=anon burst={anon_queue} delay={anon_burst};
    limit_req zone=users burst={user_queue} delay={user_burst};

    add_header Access-Control-Allow-Origin * always;
    add_header Access-Control-Allow-Headers "{cors_headers}" always;
    add_header Access-Control-Allow-Methods "GET, POST, PATCH, PUT, DELETE, OPTIONS" always;
    add_header Access-Control-Expose-Headers "content-range, content-location" always;
    add_header Retry-After $retry_after always;
    # What nginx refuses while it reads a request, before any location: JSON with a reason too.
    # A request line nginx could not read has no URI, from which no named location can be
    # reached: these go to URIs of the gateway's own. (A location that names error pages of its
    # own names these again.)
    error_page 400 /gateway-errors/bad_request;
    error_page 494 /gateway-errors/headers_too_large;
    error_page 414 /gateway-errors/request_line_too_long;
    error_page 413 /gateway-errors/body_too_large;
    error_page 404 /gateway-errors/not_found;

    if ($invalid_query_encoding) {{
      return 400 '{not_utf8}';
    }}

    location = /health {{
      return 200 '{{"status":"ok"}}';
    }}

    location / {{ return 404; }}

    # The gateway's own answers (error_page sends each failure to one of them).
    location @missing_key {{ return 401 '{{"message":"No API key found in request"}}'; }}
    location @invalid_key {{ return 401 '{{"message":"Invalid authentication credentials"}}'; }}
    location /gateway-errors/ {{
      internal;
      location = /gateway-errors/bad_request {{
        return 400 '{{"code":"bad_request","message":"the request is malformed"}}';
      }}
      location = /gateway-errors/headers_too_large {{
        return 400 '{{"code":"headers_too_large","message":"a request header may hold 8 KiB"}}';
      }}
      location = /gateway-errors/request_line_too_long {{
        return 414 '{{"code":"request_line_too_long","message":"a request line may hold 8 KiB"}}';
      }}
      location = /gateway-errors/body_too_large {{
        return 413 '{{"code":"body_too_large","message":"Request size limit exceeded"}}';
      }}
      location = /gateway-errors/not_found {{
        return 404
          '{{"code":"not_found","message":"the API is under /rest/v1/, /auth/v1/ and /realtime/v1/"}}';
      }}
    }}
    location @anon_body_too_large {{
      return 413
        '{{"code":"body_too_large","message":"an anonymous request body may hold {anon_body_bytes} bytes"}}';
    }}
    location @query_too_long {{
      return 414
        '{{"code":"query_too_long","message":"an anonymous query string may hold {anon_query_bytes} bytes"}}';
    }}
    location @rate_limited {{ return 429 '{{"code":"rate_limited","message":"API rate limit exceeded"}}'; }}
    location @bad_gateway {{
      return 502 '{{"message":"An invalid response was received from the upstream server"}}';
    }}

    # PostgREST refuses a token before it reads the request's body, answers 401 and closes the
    # connection once it has drained 8 KiB of it. A larger body is still on its way when the
    # connection resets, and nginx can only answer 502. So when sending to PostgREST fails, ask it
    # again about the token alone: a GET for a media type it never serves, which it answers
    # without the database, 401 (the answer the client should have had, passed on as is) for a
    # token it refuses and 415 otherwise, when the 502 stands.
    location @token_check {{
      rewrite ^ /? break;
      proxy_method GET;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header Content-Type "";
      proxy_set_header Accept application/vnd.mycelium.token-check;
      proxy_set_header apikey "";
      proxy_set_header Host $host;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_intercept_errors on;
      error_page 415 502 503 504 = @bad_gateway;
      proxy_pass http://postgrest;
    }}

    location /rest/v1/ {{
      if ($request_method = OPTIONS) {{ return 204; }}
      error_page 418 = @missing_key;
      error_page 419 = @invalid_key;
      error_page 413 /gateway-errors/body_too_large;
      error_page 414 = @query_too_long;
      error_page 429 = @rate_limited;
      error_page 502 = @token_check;
      if ($key_check = missing) {{ return 418; }}
      if ($key_check = invalid) {{ return 419; }}
      if ($anon_query_too_long) {{ return 414; }}
      if ($anon_filter = encoded) {{
        return 400 '{encoded_alphanumeric_answer}';
      }}
      if ($anon_filter = too_complex) {{
        return 400 '{filter_too_complex}';
      }}
      if ($unsupported_media_type) {{
        return 415 '{unsupported_media_type}';
      }}
      # An anonymous body has an allowance of its own (Limits), which only a location can set.
      if ($caller = anon) {{
        rewrite ^/rest/v1/(.*)$ /anon/rest/v1/$1 last;
      }}
{rest_proxy}
    }}

    location /anon/rest/v1/ {{
      internal;
      client_max_body_size {anon_body_bytes};
      error_page 404 /gateway-errors/not_found;
      error_page 413 = @anon_body_too_large;
      error_page 429 = @rate_limited;
      error_page 502 = @token_check;
{rest_proxy}
    }}

    location /auth/v1/ {{
      if ($request_method = OPTIONS) {{ return 204; }}
      error_page 413 /gateway-errors/body_too_large;
      error_page 429 = @rate_limited;
      {auth}
    }}

    location /realtime/v1/ {{
      error_page 418 = @missing_key;
      error_page 419 = @invalid_key;
      error_page 413 /gateway-errors/body_too_large;
      error_page 429 = @rate_limited;
      if ($key_check = missing) {{ return 418; }}
      if ($key_check = invalid) {{ return 419; }}
      {realtime}
    }}
  }}
}}
"""
