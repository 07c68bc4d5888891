"""The OCI distribution client: references, transport, auth, pull, push."""
