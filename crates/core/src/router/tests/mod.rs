//! Fake-clock scenarios of the routing core: one file per behaviour, all on [`harness`].

mod harness;

mod admission;
mod auth;
mod broadcast;
mod flow_control;
mod fuzz_scenarios;
mod handshake;
mod heartbeat;
mod identity;
mod limits;
mod presence;
mod random;
mod request_reply;
mod scope;
