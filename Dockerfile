# airflow-hitl on the official Apache Airflow image: one image for every Airflow component
# (api-server, scheduler, dag-processor, triggerer, Celery worker) of docker-compose.yaml.
#
#   docker build -t airflow-hitl:local .
#
# Airflow itself stays the version the base image ships (pinned in the same pip call, as the
# image's docs ask), so installing the package never up- or downgrades Airflow by accident.
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11
FROM ${AIRFLOW_IMAGE}

COPY --chown=airflow:0 pyproject.toml README.md /opt/airflow-hitl/
COPY --chown=airflow:0 airflow_hitl /opt/airflow-hitl/airflow_hitl

# celery<5.7: Celery 5.7 breaks the Celery provider's import (apache-airflow-providers-celery 3.26).
RUN pip install --no-cache-dir \
      "apache-airflow==${AIRFLOW_VERSION}" \
      /opt/airflow-hitl \
      "apache-airflow-providers-celery>=3.26" \
      "celery<5.7" \
      "apache-airflow-providers-fab>=3.10" \
      "apache-airflow-providers-postgres>=6.0"
