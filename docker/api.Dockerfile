# The API image (also migrations, beat and Flower): no torch, no GPU libraries.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY janus_batch ./janus_batch
COPY api ./api
COPY migrations ./migrations
COPY janus ./janus
COPY worker ./worker
RUN pip install --no-cache-dir ".[server]"
EXPOSE 8000
CMD ["uvicorn", "api.main:app", "--host", "0.0.0.0", "--port", "8000"]
