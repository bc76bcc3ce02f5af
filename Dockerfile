FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /src
COPY . /src
RUN pip install --no-cache-dir .

WORKDIR /data
CMD ["bridge", "dispatch"]
