"""The Helm chart, the policy script and the Dockerfile, checked with the real tools."""
