# CPU image:
#   docker build -t wavedistill .
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD:/work" -w /work wavedistill \
#       synthesize --input clip.wav --output out.wav
# Runs as whichever user --user names (the owner of the bind-mounted folder), so files it
# writes there belong to that user; every cache lives under /tmp, writable by any user.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

RUN apt-get update \
    && apt-get install -y --no-install-recommends libsndfile1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/wavedistill
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY wavedistill ./wavedistill
RUN pip install --no-cache-dir -c constraints.txt torch --index-url "${TORCH_INDEX}" \
    && pip install --no-cache-dir -c constraints.txt ".[hub,onnx,kaldi]"

ENV HOME=/tmp MPLCONFIGDIR=/tmp/matplotlib NUMBA_CACHE_DIR=/tmp/numba \
    HF_HOME=/tmp/huggingface
WORKDIR /work
ENTRYPOINT ["wavedistill"]
CMD ["--help"]
