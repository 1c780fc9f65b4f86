"""The management service (`hvsim serve`): the simulation on a thread of its own, an HTTP API over it, its users and roles, a command-line client and a web console."""
