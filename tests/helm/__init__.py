"""The Helm chart (helm/token-broker), the policy script and the Dockerfile, checked with real tools."""
