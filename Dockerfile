# syntax=docker/dockerfile:1
# bedrock-usage-bot: `docker build -t bedrock-bot .` then
#   docker run -p 3000:3000 -e SLACK_BOT_TOKEN=… -e SLACK_SIGNING_SECRET=… -e DATABASE_URL=… \
#     -e AWS_REGION=… -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY -e AWS_SESSION_TOKEN bedrock-bot
# (on ECS/EC2 the task role or instance profile supplies the AWS credentials; deploy/README.md).
# The image runs `bedrock-bot serve` (it migrates the database first); any other subcommand
# works too: `docker run bedrock-bot migrate`, `… run-job usage_sync`, `… manifest`.
ARG PYTHON_IMAGE=python:3.11-slim

# ---- builder: compilers only here, in case a dependency has no wheel for the platform
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY handlers ./handlers
COPY jobs ./jobs
COPY demo ./demo
COPY migrations ./migrations
COPY bot_litellm ./bot_litellm
# A regular (non-editable) install: the venv is all the final image needs.
RUN pip install . && python -m compileall -q /opt/venv

# ---- final: the venv on a clean slim base, no build tools, not root
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="bedrock-usage-bot" \
      org.opencontainers.image.description="Slack bot that governs Amazon Bedrock usage per user and team" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/matplotlib \
    BOT_PORT=3000 \
    BOT_PORT_FILE=/tmp/bedrock-bot.port
RUN groupadd --system --gid 10001 bot \
    && useradd --system --uid 10001 --gid bot --home-dir /home/bot --create-home \
       --shell /usr/sbin/nologin bot \
    && mkdir -p /data \
    && chown bot:bot /data
COPY --from=builder /opt/venv /opt/venv
# The default DATABASE_URL (sqlite:///bedrock-bot.db) is relative: it lands in /data.
# Production uses PostgreSQL: set DATABASE_URL=postgresql+psycopg://…
WORKDIR /data
VOLUME ["/data"]
USER 10001:10001
EXPOSE 3000
# slim has no curl: ask /healthz with the standard library (any HTTP error or refusal exits 1),
# on the port serve really listens on (it writes it to BOT_PORT_FILE, so `serve --port` is
# followed too), else BOT_PORT. deploy/bedrock-bot.yaml uses the same command.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; f = os.environ.get('BOT_PORT_FILE', ''); port = open(f).read().strip() if f and os.path.exists(f) else os.environ.get('BOT_PORT', '3000'); urllib.request.urlopen('http://127.0.0.1:' + port + '/healthz', timeout=4)"]
# The bot runs as PID 1 and handles SIGTERM/SIGINT itself (handlers/shutdown.py): it stops
# taking requests, lets jobs finish, frees the scheduler lease and exits within 10 s. It starts
# no child processes, so it needs no init to reap them (tini would only forward the signal).
STOPSIGNAL SIGTERM
ENTRYPOINT ["bedrock-bot"]
CMD ["serve"]
