FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /src
COPY . /src
# The postgres extra (psycopg 3) lets the same image use PostgreSQL (docker-compose.postgres.yml).
RUN pip install --no-cache-dir '.[postgres]'

WORKDIR /data
CMD ["bridge", "dispatch"]
