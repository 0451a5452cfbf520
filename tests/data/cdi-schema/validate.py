#!/usr/bin/python3
"""Validates CDI spec files against the CDI schema (schema.json and defs.json beside this file,
from github.com/cncf-tags/container-device-interface, schema/, commit 05ae4b5b, Apache-2.0).
Usage: validate.py SPEC.json...; exit 1 naming the first file that does not validate."""
import json
import pathlib
import sys

import jsonschema

here = pathlib.Path(__file__).resolve().parent
schema = json.loads((here / "schema.json").read_text())
defs = json.loads((here / "defs.json").read_text())
resolver = jsonschema.RefResolver(
    base_uri=here.as_uri() + "/", referrer=schema, store={(here / "defs.json").as_uri(): defs}
)
for name in sys.argv[1:]:
    try:
        jsonschema.validate(json.loads(pathlib.Path(name).read_text()), schema, resolver=resolver)
    except jsonschema.ValidationError as error:
        print(f"{name}: {error.message}", file=sys.stderr)
        sys.exit(1)
    print(f"{name}: valid")
