# The `mycelium` command with the repository's migrations: what the compose `migrate` and
# `metrics` services and the k3s migrate Job and metrics Deployment run.
#
#   docker build -f deploy/migrate.Dockerfile -t ghcr.io/threefoldtech/mycelium-migrate:0.1.0 .
#
# The tag follows the version in pyproject.toml (tests check the manifests use it).
FROM python:3.11.13-slim-bookworm

# No bytecode files, unbuffered logs (Job and container logs show each line as it happens).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY cli/ cli/
COPY mycelium_client/ mycelium_client/
COPY sql/ sql/
# The server pins: the wheel carries them (pyproject.toml force-includes the file).
COPY supabase/versions.env supabase/versions.env
# The command's dependencies are the `cli` extra (the package alone is the client), its traces'
# the `otel` extra; constraints.txt pins the same dependency versions CI tests with.
RUN pip install --constraint constraints.txt '.[cli,otel]' \
    && mkdir -p /app \
    && cp -r sql /app/sql \
    && rm -rf /src

# `mycelium sql push --dir /app/sql` pushes exactly the files this image was built from; the
# compose file mounts the checkout's sql/ over it so development needs no rebuild.
ENV MYCELIUM_SQL_DIR=/app/sql
WORKDIR /app
USER nobody
ENTRYPOINT ["mycelium"]
CMD ["--help"]
