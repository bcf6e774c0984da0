"""LIS: FHIR R4 and HL7 v2 reports of specimens, and the MLLP outbox that pushes them."""
