"""Plain-Python logic that the Triton models run.

Everything here imports without Triton and uses relative imports only: the export copies this
package into each Python-backend model of a repository, which keeps a repository self-contained.
"""
