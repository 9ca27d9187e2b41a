//! weft runtime: executes compiled plans (see ARCHITECTURE.md).
