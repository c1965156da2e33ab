"""Give a team access to a stx MLflow server (run as the server's admin).

    MLFLOW_TRACKING_URI=http://mlflow-host:5000 MLFLOW_TRACKING_USERNAME=admin \
    MLFLOW_TRACKING_PASSWORD=... python docker/team-access.py --users-file team.txt

`team.txt` holds one `name:password` per line (a line with a name only keeps an existing
user's password). For each member it creates the user if missing, then grants EDIT on the
shared registered models `stx-<variant>` (created here, empty, if they do not exist yet),
so every member can register new versions of them; only the admin can delete or rename
them (MANAGE). Everything else follows the server's default permission
(MLFLOW_DEFAULT_PERMISSION, READ by default): members read every experiment, run in the
experiments they create (which they MANAGE), and cannot change another member's runs.
Re-running the script is harmless.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

MODELS = ("stx-baseline", "stx-lora", "stx-lora-mhc", "stx-lora-velocity", "stx-lora-mhc-velocity", "stx-scratch")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users-file", type=Path, required=True, help="name:password per line")
    parser.add_argument("--permission", default="EDIT", choices=("READ", "EDIT", "MANAGE"),
                        help="what members may do on the shared stx-* models (EDIT: register versions)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient

    uri = mlflow.get_tracking_uri()
    auth, client = AuthServiceClient(uri), MlflowClient(uri, registry_uri=uri)
    members = []
    for line in args.users_file.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, password = line.strip().partition(":")
        try:
            auth.get_user(name)
        except MlflowException:
            if not password:
                print(f"team-access: {name} does not exist and has no password in {args.users_file}", file=sys.stderr)
                return 2
            auth.create_user(name, password)
            print(f"created user {name}")
        members.append(name)
    for model in MODELS:
        try:
            client.get_registered_model(model)
        except MlflowException:
            client.create_registered_model(model, description=f"stx {model.removeprefix('stx-')}: shared by the team; "
                                                              f"every version is tagged with its experiment and data.")
        for name in members:
            auth.grant_user_permission(name, "registered_model", model, args.permission)
    print(f"{len(members)} member(s) may register versions of {', '.join(MODELS)} ({args.permission})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
