"""Clients of the worker tier: the async client (many calls in flight per connection), its
pools, balancing and health, the blocking client, and the two callers the gateway uses
(:class:`~offloop.client.caller.AsyncCaller`, :class:`~offloop.client.actors.ActorCaller`).
"""
