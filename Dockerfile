# peft-planner API: the planner (pure Python) plus the '[step]' and '[trl]' extras (torch CPU, transformers,
# PEFT, bitsandbytes, TRL) for the trace engine. No CUDA in this image: torch comes from the CPU wheel index.
#   docker build -t peft-planner .
#   docker run --rm -p 127.0.0.1:8000:8000 -v planner-data:/data peft-planner
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PEFT_PLANNER_DATABASE_PATH=/data/peft-planner.sqlite3

RUN useradd --system --uid 10001 --user-group --home-dir /srv/peft-planner --no-create-home planner \
 && mkdir -p /srv/peft-planner /data \
 && chown planner:planner /data

WORKDIR /srv/peft-planner

# torch first, pinned, from the CPU index (its own layer: the largest download, rarely changes).
# GPU workers: --build-arg TORCH_INDEX=<a CUDA wheel index of torch 2.13.0> (docker-compose.yml, `worker`).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir --index-url ${TORCH_INDEX} torch==2.13.0

COPY pyproject.toml README.md ./
COPY app/ app/
COPY templates/ templates/
COPY static/ static/
# torch==2.13.0 in '[step]' is already satisfied by the CPU wheel above (2.13.0+cpu).
RUN pip install --no-cache-dir '.[step,trl]'
# uvicorn puts its --app-dir (default: the working directory) first on sys.path, so app/ is imported
# from here, next to templates/ and static/ that app/main.py and app/routers/pages.py read.

USER planner
VOLUME /data
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

# Inside the container the server must bind 0.0.0.0 to be reachable through the published port;
# keep it private on the host with the publish address instead (-p 127.0.0.1:8000:8000).
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000", "--timeout-graceful-shutdown", "10"]
