"""The control plane: administration, the review console, control-plane authentication, `lgsp apply`."""
