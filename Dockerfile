# The worker, the starter (`billing`) and the codec server: runtime dependencies from the
# hashed lock, then the project without its dependencies. The embedded stack (local_stack/,
# PostgreSQL and Temporal binaries) is not in it. `sandbox` adds the local Stripe sandbox.
FROM python:3.11.13-slim-bookworm AS app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
COPY pyproject.toml ./
COPY billing billing
COPY workflows workflows
COPY activities activities
COPY worker.py starter.py temporal_ops.py ./
RUN pip install --no-cache-dir --no-deps . && useradd --create-home billing
USER billing

FROM app AS sandbox
COPY stripe_sandbox stripe_sandbox
CMD ["python", "-m", "stripe_sandbox", "--port", "12111"]

# Last, so that a plain `docker build .` gives the worker's image.
FROM app AS runtime
CMD ["python", "worker.py"]
