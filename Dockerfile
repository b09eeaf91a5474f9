# One image for the worker, the starter and the Stripe sandbox.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY billing billing
COPY workflows workflows
COPY activities activities
COPY stripe_sandbox stripe_sandbox
COPY worker.py starter.py ./
RUN pip install --no-cache-dir . && useradd --create-home billing
USER billing
CMD ["python", "worker.py"]
