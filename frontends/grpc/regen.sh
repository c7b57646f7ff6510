#!/bin/sh
# Regenerate katran_grpc's committed *_pb2*.py stubs (needs grpcio-tools).
exec python3 "$(dirname "$0")/regen.py" "$@"
