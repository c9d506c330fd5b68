"""Kubernetes access: client configuration, reflectors (list+watch caches), work queue.

Data flows one way (DESIGN.md): event → reflector cache → work queue (keys, coalesced)
→ handler, which reads the object's current state from the cache.
"""
