# The GPU worker image: CUDA build of torch, transformers, the model runtime.
FROM pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime
WORKDIR /app
COPY pyproject.toml README.md ./
COPY janus_batch ./janus_batch
COPY api ./api
COPY migrations ./migrations
COPY janus ./janus
COPY worker ./worker
# torch comes from the base image; the range in pyproject (torch>=2.6) accepts it, so pip
# replaces nothing (transformers 5 needs torch >= 2.6).
RUN pip install --no-cache-dir ".[worker]"
ENV HF_HOME=/hf-cache
CMD ["celery", "-A", "worker.app", "worker", "-P", "solo", "-c", "1", "-Q", "janus.caption,janus.generate,janus.control", "-E"]
