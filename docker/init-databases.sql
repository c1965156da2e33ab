-- One PostgreSQL server, three databases: MLflow runs/registry, MLflow auth, Optuna studies.
CREATE DATABASE mlflow;
CREATE DATABASE mlflow_auth;
CREATE DATABASE optuna;
