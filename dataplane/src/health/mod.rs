//! Health of tenant machines and what follows from it: when a machine is
//! declared up or down (`rise`/`fall`), which connectors take new flows,
//! which core is active, and what operators may do by hand. Everything here
//! is decided from plain values, so the agent's loop (which owns the maps)
//! asks and writes, and the rules are tested without a kernel.
//!
//! Every decided change comes out as a [`Transition`]: the one value to log,
//! count and turn into an event.

pub mod apply;
pub mod decide;
pub mod known;
pub mod schedule;
pub mod store;
pub mod tracker;

pub use decide::{
    Availability, CoreChoice, HOLD_DOWN_INTERVALS, ManualError, check_activate, check_machine, choose_core,
    connectors_in_choice,
};
pub use schedule::Schedule;
pub use tracker::{Machine, Probe, Role, State, Tracker, Transition};
