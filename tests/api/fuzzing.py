"""What the API fuzzers share: the OpenAPI schema as drf-spectacular generates it, the checks
every answer must pass, and the knobs for a longer search.

CI runs the same bounded, derandomized examples every time (a new 500 fails the build, never a
lucky draw); FUZZ_EXAMPLES=500 FUZZ_SEARCH=1 scripts/test tests/api searches further by hand."""

import json
import os

from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

RAW = json.loads(OpenApiJsonRenderer().render(SchemaGenerator().get_schema(request=None,
                                                                           public=True)))
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
SEARCH = os.environ.get("FUZZ_SEARCH") == "1"

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
