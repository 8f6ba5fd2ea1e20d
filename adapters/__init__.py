"""Built-in adapters, installed as `lgsp_adapters` and discovered through the
`lgsp.adapters` entry-point group exactly like third-party ones."""
