"""OpenAPI documents: the REST contract (installed as lgsp_openapi)."""
