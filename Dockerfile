# CPU image: `docker build -t wavedistill .` then `docker run --rm -v $PWD:/data wavedistill info /data/exp/teacher/checkpoints/best.pt`
FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends libsndfile1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/wavedistill
COPY pyproject.toml README.md LICENSE ./
COPY wavedistill ./wavedistill
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && pip install --no-cache-dir .

RUN useradd --create-home --uid 1000 wavedistill
USER wavedistill
WORKDIR /home/wavedistill
ENTRYPOINT ["wavedistill"]
CMD ["--help"]
