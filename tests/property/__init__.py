"""Property tests (hypothesis) through the real worker and the real PostgreSQL.

Hypothesis drives plain (synchronous) test functions, so each module runs ONE worker on an
event loop of its own in a background thread, on a fresh database, and hands it coroutines
(``ThreadedWorker.call``). ``PGFLOW_PROPERTY_EXAMPLES`` sets the examples per test.
"""
