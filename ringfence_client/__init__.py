"""Python client for the Ringfence agent API."""
