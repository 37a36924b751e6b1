//! The `carwash` binary: the agent and the operator's commands.
fn main() {}
