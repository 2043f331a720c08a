# Engine image: the training engine, its CLI and metrics endpoint, and the
# TensorBoard server (docker-compose.yml runs both from this image).
#
# CPU build of torch by default. A GPU image picks another torch with build
# arguments (the index options come from the user, e.g. their CUDA wheel index):
#   docker build --build-arg TORCH_SPEC=torch==2.13.0 \
#                --build-arg TORCH_PIP_ARGS="--index-url <CUDA wheel index>" .
# or, through compose: GPU_TORCH_SPEC / GPU_TORCH_PIP_ARGS (see docker-compose.yml).
FROM python:3.11.11-slim-bookworm

ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_PIP_ARGS=""
# 1 = also the optional Ray executor (compose profile `ray`, requirements-ray.txt).
ARG WITH_RAY=0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    HOME=/home/engine

WORKDIR /app

# torch first, in a layer of its own: it is by far the largest download, and
# once it is installed requirements.txt's `torch` range is already satisfied,
# so pip cannot swap in another (multi-GB CUDA) build.
RUN pip install ${TORCH_PIP_ARGS} "${TORCH_SPEC}"

# Ray (large, rarely changing) before the engine's own files, so editing them keeps this layer.
COPY requirements-ray.txt ./
RUN if [ "$WITH_RAY" = 1 ]; then pip install -r requirements-ray.txt; fi

COPY requirements.txt pyproject.toml README.md ./
COPY engine ./engine
COPY scripts ./scripts
COPY sweeps ./sweeps
RUN pip install -r requirements.txt

# Run as uid/gid 65534 (nobody), the user of the prom/prometheus image: the
# engine writes its file_sd target files atomically through a 0600 temp file,
# and Prometheus reads them from the shared volume as that same user.
RUN mkdir -p /data/results /data/file_sd /home/engine \
    && chown -R 65534:65534 /data /home/engine
USER 65534:65534

EXPOSE 8000 6006
CMD ["python", "scripts/run.py", "--metrics_host", "0.0.0.0", "--output_dir", "/data/results"]
