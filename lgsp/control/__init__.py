"""The control plane: administration, the review console, control-plane authentication, `lgsp apply`."""

# The control plane's addresses the data plane names too (its catalog), without importing the plane.
TOKEN_PATH = "/oauth/token"
JWKS_PATH = "/.well-known/jwks.json"
