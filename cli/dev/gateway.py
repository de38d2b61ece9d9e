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
    callers keep nginx's and Kong's request line limit (8 KiB)."""

    anon_per_second: int = 20
    anon_burst: int = 40
    user_per_second: int = 50
    user_burst: int = 100
    anon_query_bytes: int = 2048


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

    location = /health {{
      return 200 '{{"status":"ok"}}';
    }}

    # The gateway's own answers (error_page sends each failure to one of them).
    location @missing_key {{ return 401 '{{"message":"No API key found in request"}}'; }}
    location @invalid_key {{ return 401 '{{"message":"Invalid authentication credentials"}}'; }}
    location @body_too_large {{
      return 413 '{{"code":"body_too_large","message":"Request size limit exceeded"}}';
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
      error_page 413 = @body_too_large;
      error_page 414 = @query_too_long;
      error_page 429 = @rate_limited;
      error_page 502 = @token_check;
      if ($key_check = missing) {{ return 418; }}
      if ($key_check = invalid) {{ return 419; }}
      if ($anon_query_too_long) {{ return 414; }}
      proxy_set_header apikey "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass http://postgrest/;
    }}

    location /auth/v1/ {{
      if ($request_method = OPTIONS) {{ return 204; }}
      error_page 413 = @body_too_large;
      error_page 429 = @rate_limited;
      {auth}
    }}

    location /realtime/v1/ {{
      error_page 418 = @missing_key;
      error_page 419 = @invalid_key;
      error_page 413 = @body_too_large;
      error_page 429 = @rate_limited;
      if ($key_check = missing) {{ return 418; }}
      if ($key_check = invalid) {{ return 419; }}
      {realtime}
    }}
  }}
}}
"""
