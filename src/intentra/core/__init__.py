"""The sans-I/O protocol core: no sockets, no clocks, no global randomness."""
