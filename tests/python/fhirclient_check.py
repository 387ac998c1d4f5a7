"""Acceptance: the SMART on FHIR Python client (PyPI `fhirclient`, not written here) reads
through `fhir-unify serve`. Usage: fhirclient_check.py BASE_URL BEARER_TOKEN

Reads the CapabilityStatement, reads one Patient, pages a search by following the server's
`next` links, and reads an instance history, all parsed with fhirclient's R4 models.
Prints one JSON line with what it saw; exits non-zero on any failure.
"""
import json
import sys

from fhirclient import client
from fhirclient.models.bundle import Bundle
from fhirclient.models.capabilitystatement import CapabilityStatement
from fhirclient.models.patient import Patient


def main() -> int:
    base, token = sys.argv[1], sys.argv[2]
    smart = client.FHIRClient(settings={"app_id": "fhir-unify-acceptance", "api_base": base + "/"})
    server = smart.server
    server.session.headers["Authorization"] = "Bearer " + token

    capability = CapabilityStatement(server.request_json("metadata"))
    types = sorted(r.type for r in capability.rest[0].resource)

    patient = Patient.read("x1", server)

    search = Patient.where(struct={"gender": "female", "_count": "2"})
    pages = 0
    ids = []
    for bundle in search.perform_iter(server):
        pages += 1
        ids.extend(e.resource.id for e in (bundle.entry or []))

    history = Bundle(server.request_json("Patient/p001/_history"))
    versions = [e.response.etag for e in history.entry]

    print(json.dumps({
        "fhirVersion": capability.fhirVersion,
        "types": types,
        "read": patient.id,
        "pages": pages,
        "ids": ids,
        "historyType": history.type,
        "versions": versions,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
