"""XML schemas the LGSP validates against (installed as lgsp_schemas)."""
