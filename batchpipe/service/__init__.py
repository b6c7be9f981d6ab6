"""The simulated batch service: one file-backed engine with the providers' real lifecycle (`engine`),
the answers it gives (`responders`), and its loopback HTTP front end for both APIs (`emulator`).

The `local` provider drives the engine in process; the emulator serves it to the official SDKs."""
