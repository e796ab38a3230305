"""Resource tests: for each thing a client can make the gateway hold, drive past its documented
bound and check that memory and service stay within it (docs/design/fanout.md)."""
